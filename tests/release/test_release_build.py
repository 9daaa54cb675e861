"""The release build, end to end (opt in: ``scripts/test -m release``; minutes, it runs PyInstaller).

The standalone executable, run with no venv on PATH, gives the same results as the venv for every
command a user relies on; the .deb installs into a clean root, runs, shows its man page and leaves
nothing behind; lintian finds no error.  ``RELEASE_DIST`` points at an existing build (CI's release
job); otherwise ``scripts/build-release --no-sign`` builds one here.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_root, need_tools
from fsbuild import hash_dir, make_ext, make_tree

pytestmark = pytest.mark.release
REPO = Path(__file__).resolve().parents[2]
SFX_CACHE = tempfile.mkdtemp(prefix="iu-sfx-cache-")  # where the single file unpacks itself in these tests
atexit.register(shutil.rmtree, SFX_CACHE, True)
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "LANG": "C.UTF-8", "IU_CACHE_DIR": SFX_CACHE}
# fields of `info --json` that name the run, not the data (the tool's version and command line are in the
# header, so its size differs too; the data frames are compared through `zstd -dc` and restore)
RUN_FIELDS = ("image", "created", "finished", "tool", "hostname", "command_line", "source", "image_bytes", "ratio")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("RELEASE_DIST")
    if given:
        return Path(given)
    need_tools("patchelf", "dpkg-deb", "objdump")
    work = tmp_path_factory.mktemp("release")
    env = {**os.environ, "DIST": str(work / "dist"), "BUILD_DIR": str(work / "build")}
    env.setdefault("DEBFULLNAME", "imaging-utility tests")
    env.setdefault("DEBEMAIL", "tests@example.org")
    proc = subprocess.run([str(REPO / "scripts" / "build-release"), "--no-sign"], env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "dist"


def _one(dist: Path, pattern: str) -> Path:
    found = [p for p in dist.glob(pattern) if p.is_file()]
    assert len(found) == 1, (pattern, sorted(p.name for p in dist.iterdir()))
    return found[0]


@pytest.fixture(scope="session")
def exe(dist: Path) -> Path:
    return _one(dist, "imaging-utility-*-linux-*[!z]")  # the single file, not the .tar.gz


class Runner:
    """``imaging-utility`` from the venv or from the standalone executable (with a clean environment)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env

    def __call__(self, *args: str | Path, check: int | None = 0, timeout: float = 300,
                 ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *map(str, args)], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check is not None:
            assert proc.returncode == check, f"{self.name} {args}: exit {proc.returncode}\n{proc.stderr}"
        return proc

    @contextlib.contextmanager
    def serving(self, *args: str | Path) -> Iterator[str]:
        """Start a server command; yield the URL it prints; stop it with SIGTERM."""
        proc = subprocess.Popen([*self.argv, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = re.search(r"at (\S+?)(?:;| \(|$)", line)
            assert m, f"{self.name}: no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
            yield m.group(1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _runners(exe: Path) -> list[Runner]:
    venv = Runner("venv", [sys.executable, "-m", "imaging_utility"], {**os.environ})
    standalone = Runner("standalone", [str(exe)], dict(CLEAN_ENV))
    return [venv, standalone]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    need_tools("mke2fs", "debugfs")
    work = tmp_path_factory.mktemp("vol")
    files = work / "files"
    make_tree(files, large_mib=2)
    vol = work / "ext4.raw"
    return vol, make_ext(vol, 48, files)


def test_standalone_runs_without_python(exe: Path) -> None:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=CLEAN_ENV, timeout=120,
                         check=True).stdout
    assert re.match(r"imaging-utility \d+\.\d+\.\d+", out)
    assert "standalone executable" in out and "zstd 1." in out
    assert "CRC-32 ISA-L " in out  # the bundle carries python-isal (else frame CRCs fall back to zlib's)
    assert "CRC-32C google-crc32c " in out  # and google-crc32c's C extension (else XFS/Btrfs checks are slower)
    # the .tar.gz holds the same program as a folder
    tarball = _one(exe.parent, "imaging-utility-*-linux-*.tar.gz")
    unpack = exe.parent.parent / "unpacked"
    shutil.rmtree(unpack, ignore_errors=True)
    unpack.mkdir()
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(unpack)], check=True)
    folder_exe = next(unpack.glob("*/imaging-utility"))
    assert subprocess.run([str(folder_exe), "--version"], capture_output=True, text=True, env=CLEAN_ENV,
                          check=True, timeout=120).stdout == out


def test_single_file_unpacks_once_or_for_one_run(exe: Path, tmp_path: Path) -> None:
    """The single file unpacks into its cache on the first run and starts from there after; with no place
    to keep it, it unpacks for one run and the program removes that copy when it ends."""
    need_root()
    cache = tmp_path / "cache"
    env = {**CLEAN_ENV, "IU_CACHE_DIR": str(cache)}
    first = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, check=True, timeout=120)
    [unpacked] = cache.glob("*/*/imaging-utility")
    stamp = unpacked.stat().st_mtime_ns
    second = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert second.stdout == first.stdout and "standalone executable" in first.stdout
    assert [p.name for p in cache.iterdir()] == [unpacked.parent.parent.name]
    assert unpacked.stat().st_mtime_ns == stamp
    tmp = tmp_path / "tmp"
    squatted = tmp / "imaging-utility-0"  # the /tmp place taken by another user: never used
    squatted.mkdir(parents=True, mode=0o777)
    os.chown(squatted, 65534, 65534)
    env = {k: v for k, v in CLEAN_ENV.items() if k not in ("HOME", "IU_CACHE_DIR")} | {"TMPDIR": str(tmp)}
    once = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert once.stdout == first.stdout
    assert list(tmp.iterdir()) == [squatted] and list(squatted.iterdir()) == []


def test_standalone_gives_the_venv_results(exe: Path, volume: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    need_tools("nbdcopy", "curl", "zstd")
    vol, expected = volume
    source_sha = _sha(vol)
    results: dict[str, dict[str, object]] = {}
    for run in _runners(exe):
        out = tmp_path / run.name
        out.mkdir()
        r: dict[str, object] = {}
        full, used = out / "full.img.zst", out / "used.img.zst"
        run("image", vol, full)
        run("image", "--used-only", vol, used)
        for img in (full, used):
            assert "OK" in run("verify", img).stdout
        info = {name: json.loads(run("info", "--json", img).stdout) for name, img in (("full", full), ("used", used))}
        r["info"] = {k: {f: v for f, v in i.items() if f not in RUN_FIELDS} for k, i in info.items()}
        assert info["full"]["tool"].startswith("imaging-utility ")
        run("restore", full, out / "restored.raw")
        r["restored"] = _sha(out / "restored.raw")
        assert r["restored"] == source_sha
        r["zstd"] = hashlib.sha256(subprocess.run(["zstd", "-dc", str(used)], capture_output=True,
                                                  check=True).stdout).hexdigest()
        r["ls"] = json.loads(run("ls", "-R", "--json", used, "/").stdout)
        run("extract", used, "/", out / "extracted")
        r["extracted"] = hash_dir(out / "extracted", skip=("lost+found",))
        assert r["extracted"] == expected
        with run.serving("serve-proxy", full, "--port", "0") as url:
            subprocess.run(["nbdcopy", url, str(out / "nbd.raw")], check=True, timeout=300)
        r["nbd"] = _sha(out / "nbd.raw")
        assert r["nbd"] == source_sha
        with run.serving("webdav", used, "--port", "0") as url:
            body = subprocess.run(["curl", "-sf", url.rstrip("/") + "/hello.txt"], capture_output=True,
                                  check=True, timeout=60).stdout
            listing = urllib.request.urlopen(url, timeout=60).read().decode()
        r["webdav"] = hashlib.sha256(body).hexdigest()
        assert body == b"hello, world\n" and "large.bin" in listing
        results[run.name] = r
    assert results["standalone"] == results["venv"]


# the fuzzers' real volumes (fuzz/make_seeds.py): every filesystem the file readers know, with what each
# needs beyond the basics (NTFS streams, Btrfs zlib/LZO/zstd extents, XFS B+tree files, LVs)
FS_VOLUMES = [("ntfs", ()), ("ext4", ()), ("ext2", ()), ("fat12", ()), ("fat32", ()), ("exfat", ()), ("xfs", ()),
              ("xfs4", ()), ("btrfs", ()), ("btrfs", ("--subvolume", "5")), ("btrfs-mixed", ("--subvolume", "5")),
              ("lvm", ("--lv", "fuzzvg/data")), ("lvm", ("--lv", "fuzzvg/home"))]


def test_standalone_reads_every_filesystem(exe: Path, tmp_path: Path) -> None:
    """A module the bundle left out shows only when its filesystem is read: list and extract each kind of
    volume with both programs, and compare."""
    import zstandard

    for name, opts in FS_VOLUMES:
        raw = tmp_path / f"{name}.raw"
        if not raw.exists():
            raw.write_bytes(zstandard.ZstdDecompressor().decompress(
                (REPO / "fuzz" / "bases" / f"{name}.zst").read_bytes(), max_output_size=256 << 20))
        seen = {}
        for run in _runners(exe):
            out = tmp_path / f"{name}{''.join(opts)}-{run.name}"
            listing = json.loads(run("ls", "-R", "--json", *opts, raw, "/").stdout)
            run("extract", *opts, raw, "/", out)
            seen[run.name] = (listing, _tree_digest(out))
        assert seen["standalone"] == seen["venv"], (name, opts)
        assert seen["venv"][1], (name, opts)  # something was extracted


def _tree_digest(root: Path) -> dict[str, str]:
    """``{relpath: sha256 of a file, or "-> target" of a symlink}`` (a dangling link is not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = _sha(path)
    return out


def test_standalone_s3(exe: Path, s3server, volume: tuple[Path, dict[str, str]], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """s3:// with the standalone build, whose botocore keeps only the models the tool needs; an
    assume-role profile reaches STS (refused here: the test server has no STS, but the model loads)."""
    vol, _ = volume
    bucket = s3server.bucket("standalone")
    env = {**CLEAN_ENV, **s3server.env}
    url = f"s3://{bucket}/vol.img.zst"
    for args in (("image", vol, url), ("verify", url), ("restore", url, tmp_path / "back.raw")):
        proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, (args, proc.stderr)
    assert _sha(tmp_path / "back.raw") == _sha(vol)
    config = tmp_path / "aws-config"
    config.write_text("[profile role]\nrole_arn = arn:aws:iam::123456789012:role/x\nsource_profile = base\n"
                      "[profile base]\nregion = us-east-1\n")
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[base]\naws_access_key_id = {s3server.env['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {s3server.env['AWS_SECRET_ACCESS_KEY']}\n")
    env = {**CLEAN_ENV, "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(creds),
           "AWS_ENDPOINT_URL": s3server.env["AWS_ENDPOINT_URL"]}
    proc = subprocess.run([str(exe), "info", "--profile", "role", url], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "UnknownServiceError" not in proc.stderr and "DataNotFound" not in proc.stderr, proc.stderr


def test_standalone_mount(exe: Path, volume: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    need_root()
    need_tools("fusermount3")
    vol, _ = volume
    for run in _runners(exe):
        img, mnt = tmp_path / f"{run.name}.img.zst", tmp_path / f"mnt-{run.name}"
        mnt.mkdir()
        run("image", vol, img)
        run("mount", img, mnt, timeout=120)
        try:
            assert _sha(mnt / "disk.raw") == _sha(vol)
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            deadline = time.monotonic() + 30
            while os.path.ismount(mnt) and time.monotonic() < deadline:
                time.sleep(0.1)


def test_deb_installs_runs_and_purges_cleanly(dist: Path, tmp_path: Path) -> None:
    need_root()
    need_tools("dpkg", "man", "apt-get")
    deb = _one(dist, "imaging-utility_*.deb")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert deb.name.endswith(f"_{arch.strip()}.deb")
    # apt accepts it (dependencies resolve on this system)
    subprocess.run(["apt-get", "install", "-s", "-q", str(deb)], check=True, capture_output=True, timeout=300)
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    before = {p.relative_to(root) for p in root.rglob("*")}
    dpkg = ["dpkg", f"--root={root}", "--force-not-root", "--force-depends", "--force-script-chrootless"]
    subprocess.run([*dpkg, "-i", str(deb)], check=True, capture_output=True, timeout=300)
    exe = root / "usr/bin/imaging-utility"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=CLEAN_ENV, check=True,
                         timeout=120).stdout
    assert "standalone executable" in out
    page = subprocess.run(["man", "-l", str(root / "usr/share/man/man1/imaging-utility.1.gz")], capture_output=True,
                          text=True, env={**CLEAN_ENV, "MANWIDTH": "80"}, check=True, timeout=60)
    assert "IMAGING-UTILITY IMAGE" in page.stdout and "EXIT STATUS" in page.stdout
    for path in ("usr/share/bash-completion/completions/imaging-utility",
                 "usr/share/zsh/vendor-completions/_imaging-utility",
                 "usr/share/fish/vendor_completions.d/imaging-utility.fish",
                 "usr/share/doc/imaging-utility/copyright"):
        assert (root / path).is_file(), path
    subprocess.run([*dpkg, "--purge", "imaging-utility"], check=True, capture_output=True, timeout=300)
    left = {p.relative_to(root) for p in root.rglob("*")} - before
    left = {p for p in left if not str(p).startswith("var/lib/dpkg/")}
    assert left == set()


def test_deb_lintian_has_no_errors(dist: Path) -> None:
    need_tools("lintian")
    deb = _one(dist, "imaging-utility_*.deb")
    proc = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True, text=True, timeout=900)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors)


def test_release_checksums_cover_every_artifact(dist: Path) -> None:
    sums = (dist / "SHA256SUMS").read_text().splitlines()
    listed = {line.split(None, 1)[1] for line in sums}
    present = {p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()} - {"SHA256SUMS",
                                                                                          "SHA256SUMS.minisig"}
    assert listed == present
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dist, check=True, timeout=300)
