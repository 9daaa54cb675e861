"""Version, start-up imports and missing-dependency messages, through the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import isal
import pytest
import zstandard

import imaging_utility
from conftest import cli, need_root, need_tools
from imagetools import mixed_bytes, write_source
from imaging_utility.format import c_image

# Third-party packages and our own layers that --help must not load (each costs tens of milliseconds).
HEAVY = ("rich", "zstandard", "blake3", "dissect", "textual", "mfusepy", "wsgidav", "cheroot", "numpy",
         "imaging_utility.ops", "imaging_utility.serve", "imaging_utility.image.reader", "imaging_utility.gui",
         "imaging_utility.filesystems", "imaging_utility.devices.source", "imaging_utility.export",
         "imaging_utility.storage", "concurrent.futures", "hashlib", "subprocess")
PEP440 = re.compile(r"^\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$")


def _loaded_after(argv: list[str]) -> set[str]:
    """Modules loaded by ``main(argv)`` in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "from imaging_utility.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("argv", [["--help"], ["image", "--help"], ["webdav", "--help"], ["completion", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    assert _heavy(_loaded_after(argv)) == []


def test_version_imports_only_zstandard() -> None:
    """--version needs the zstd library's version, and nothing else: not even argparse or a command module
    (it is answered before the parser is built)."""
    loaded = _loaded_after(["--version"])
    assert {m.split(".")[0] for m in _heavy(loaded)} == {"zstandard"}
    assert not {"argparse", "logging", "imaging_utility.cli.parser", "imaging_utility.cli.image"} & loaded
    through_argparse = _loaded_after(["-v", "--version"])
    assert {m.split(".")[0] for m in _heavy(through_argparse)} == {"zstandard"}
    assert "argparse" in through_argparse


def test_version_output() -> None:
    out = cli("--version").stdout.splitlines()
    version = imaging_utility.__version__
    assert PEP440.match(version), version
    assert version != "0.1.0"
    zstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    assert out == [
        f"imaging-utility {version}",
        f"image format {c_image.FORMAT_VERSION_MAJOR}.{c_image.FORMAT_VERSION_MINOR} (seekable zstd)",
        f"zstd {zstd} (python-zstandard {zstandard.__version__})",
        f"CRC-32 ISA-L {isal.ISAL_VERSION} (python-isal {isal.__version__})",
        f"CRC-32C google-crc32c {metadata.version('google-crc32c')} (CPU instructions)",
        f"Python {platform.python_version()} ({platform.python_implementation()}, {platform.machine()}, "
        f"{sys.executable})",
    ]


def test_version_follows_git(tmp_path: Path) -> None:
    """The package version is what setuptools-scm derives from git (setup.py's scheme): 0.2.0.devN before
    the first tag, X.Y.Z on a tag."""
    need_tools("git")
    root = Path(imaging_utility.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    # the scheme on a scratch repository: no tag, then tag v0.2.0, then one commit past it
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        (repo / name).write_bytes((root / name).read_bytes())
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("SETUPTOOLS_SCM_PRETEND_VERSION", None)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)

    def version() -> str:
        code = ("import importlib.util, setuptools_scm\n"
                "spec = importlib.util.spec_from_file_location('iu_setup', 'setup.py')\n"
                "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
                "print(setuptools_scm.get_version(root='.', version_scheme=mod.version_scheme))\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=env,
                              timeout=120, check=True)
        return proc.stdout.strip().splitlines()[-1]

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    git("commit", "-q", "--allow-empty", "-m", "two")
    assert re.fullmatch(r"0\.2\.0\.dev2\+g[0-9a-f]+", version())
    git("tag", "v0.2.0")
    assert version() == "0.2.0"
    git("commit", "-q", "--allow-empty", "-m", "three")
    assert re.fullmatch(r"0\.2\.1\.dev1\+g[0-9a-f]+", version())


def test_image_header_records_the_version(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src.raw", mixed_bytes(2 << 20))
    cli("image", src, tmp_path / "a.img.zst")
    info = json.loads(cli("info", "--json", tmp_path / "a.img.zst").stdout)
    assert info["tool"] == f"imaging-utility {imaging_utility.__version__}"


def _run_without(module: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``imaging-utility ARGS`` in an interpreter where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from imaging_utility.cli.main import main\n"
            f"raise SystemExit(main({[str(a) for a in args]!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_missing_python_module_is_one_line(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src.raw", mixed_bytes(1 << 20))
    proc = _run_without("cheroot", "webdav", "--port", "0", src)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "'webdav' command needs the Python module 'cheroot'" in lines[0]
    assert "pip install cheroot" in lines[0]


def test_missing_libfuse3_names_the_debian_package(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src.raw", mixed_bytes(1 << 20))
    image = tmp_path / "a.img.zst"
    cli("image", src, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = cli("mount", "-f", image, mnt, check=4, env={"FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse3.so.3")})
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "libfuse3" in lines[0] and "apt-get install libfuse3-3" in lines[0]


def test_every_feature_is_a_default_dependency() -> None:
    """The README's one install command gives FUSE, WebDAV and the GUI: their modules are dependencies."""
    from importlib.metadata import requires

    deps = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires("imaging-utility") or []
            if "extra ==" not in r}
    assert {"mfusepy", "wsgidav", "cheroot", "textual", "zstandard", "blake3"} <= deps


def test_mount_works_with_libfuse3(tmp_path: Path) -> None:
    """mfusepy prefers libfuse 2 when both are installed; the standalone build and systems with only fuse3
    use libfuse 3, which refuses a mount whose init() does not agree with the max_read option."""
    need_root()
    need_tools("fusermount3")
    lib = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/libfuse3.so.3"),
                            Path("/usr/lib/aarch64-linux-gnu/libfuse3.so.3")) if p.exists()), None)
    if lib is None:
        need_tools("libfuse3.so.3")  # fails in CI, skips elsewhere
    data = mixed_bytes(3 << 20)
    src = write_source(tmp_path / "src.raw", data)
    image, mnt = tmp_path / "a.img.zst", tmp_path / "mnt"
    mnt.mkdir()
    cli("image", src, image)
    cli("mount", image, mnt, env={"FUSE_LIBRARY_PATH": str(lib)})
    try:
        assert (mnt / "disk.raw").read_bytes() == data
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
