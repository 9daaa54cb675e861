"""The single-file executable's self-extracting stub (packaging/sfx-stub.sh, packaging/make_sfx.py).

Run on a small stand-in for the folder build (a shell script as ``imaging-utility``), so these run in the
default suite; tests/release/test_release_build.py runs the real single file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import need_root

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packaging"))
from make_sfx import make_sfx  # noqa: E402

TOP = "imaging-utility-9.9-linux-x86_64"
PROGRAM = b"""#!/bin/sh
[ "$1" = --version ] && { echo "stand-in 9.9"; exit 0; }
echo "ran $0"
echo "remove=${IU_REMOVE_AT_EXIT:-}"
for a in "$@"; do echo "arg=$a"; done
exit 3
"""


def _tarball(path: Path, program: bytes = PROGRAM) -> None:
    with tarfile.open(path, "w:gz") as tar:
        members = ((f"{TOP}/imaging-utility", program, 0o755), (f"{TOP}/_internal/lib.so", b"x" * 4096, 0o644))
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def sfx(tmp_path: Path) -> Path:
    tarball = tmp_path / f"{TOP}.tar.gz"
    _tarball(tarball)
    out = tmp_path / "bin" / TOP
    out.parent.mkdir()
    make_sfx(tarball, out, "9.9", "x86_64")
    return out


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "TMPDIR": str(tmp), **extra}


def _run(argv: list[str | Path], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def _unpacked(base: Path) -> list[Path]:
    return sorted(base.glob(f"9.9-*/{TOP}/imaging-utility"))


def test_first_run_unpacks_into_a_private_cache_later_runs_reuse_it(sfx: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = _run([sfx, "a b", "", "--x=*"], env)
    assert proc.returncode == 3, proc.stderr
    base = tmp_path / "home/.cache/imaging-utility"
    [program] = _unpacked(base)
    assert proc.stdout.splitlines() == [f"ran {program}", "remove=", "arg=a b", "arg=", "arg=--x=*"]
    assert (base.stat().st_mode & 0o777) == 0o700
    assert not list(base.glob(".unpack.*"))
    # a later run starts the unpacked copy (changed here to show it), without unpacking again
    program.write_bytes(PROGRAM.replace(b"ran $0", b"cached $0"))
    assert _run([sfx], env).stdout.splitlines()[0] == f"cached {program}"
    assert len(list(base.iterdir())) == 1
    # called through PATH, a relative path and a symbolic link
    (tmp_path / "link").symlink_to(sfx)
    for argv, cwd in (([sfx.name], None), ([f"./{sfx.name}"], sfx.parent), (["../link"], sfx.parent)):
        run_env = {**env, "PATH": f"{sfx.parent}:{env['PATH']}"}
        assert _run(argv, run_env, cwd).stdout.startswith("cached "), argv


def test_cache_dir_choice(sfx: Path, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    assert _run([sfx], _env(tmp_path, IU_CACHE_DIR=str(chosen))).returncode == 3
    assert len(_unpacked(chosen)) == 1
    xdg = tmp_path / "xdg"
    assert _run([sfx], _env(tmp_path, XDG_CACHE_HOME=str(xdg))).returncode == 3
    assert len(_unpacked(xdg / "imaging-utility")) == 1
    env = _env(tmp_path)
    del env["HOME"]
    assert _run([sfx], env).returncode == 3
    assert len(_unpacked(tmp_path / "tmp" / f"imaging-utility-{os.getuid()}")) == 1


def test_first_runs_at_once_unpack_one_copy(sfx: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _run([sfx, "x"], env).returncode, range(8)))
    assert codes == [3] * 8
    base = tmp_path / "home/.cache/imaging-utility"
    assert len(_unpacked(base)) == 1
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in next(base.glob("9.9-*")).iterdir()] in ([".complete", TOP], [TOP, ".complete"])


def test_a_directory_of_another_user_or_noexec_is_never_used(sfx: Path, tmp_path: Path) -> None:
    need_root()
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o777)
    os.chown(foreign, 65534, 65534)
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=8m", "tmpfs", str(noexec)], check=True)
    try:
        env = _env(tmp_path, IU_CACHE_DIR=str(foreign), XDG_CACHE_HOME=str(noexec))
        assert _run([sfx], env).returncode == 3
        assert list(foreign.iterdir()) == [] and list(noexec.rglob("*")) == [noexec / "imaging-utility"]
        assert len(_unpacked(tmp_path / "home/.cache/imaging-utility")) == 1
    finally:
        subprocess.run(["umount", str(noexec)], check=False)


def test_no_usable_place_unpacks_for_one_run(sfx: Path, tmp_path: Path) -> None:
    """With every cache place refused, the program runs from a fresh temporary directory and is told to
    remove it (packaging/entry.py does); a damaged file is named as such."""
    need_root()
    env = _env(tmp_path)
    del env["HOME"]
    squatted = tmp_path / "tmp" / f"imaging-utility-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, 65534, 65534)
    proc = _run([sfx, "y"], env)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.splitlines()
    once = Path(lines[1].removeprefix("remove="))
    assert once.parent == tmp_path / "tmp" and once.name.startswith("imaging-utility.")
    assert lines[0] == f"ran {once / TOP / 'imaging-utility'}"
    assert list(squatted.iterdir()) == []
    shutil.rmtree(once)
    # a truncated download
    damaged = tmp_path / "damaged"
    damaged.write_bytes(sfx.read_bytes()[:-20])
    damaged.chmod(0o755)
    proc = _run([damaged], _env(tmp_path, IU_CACHE_DIR=str(tmp_path / "c2")))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (f"imaging-utility: {damaged} is damaged or truncated: download it again "
                                   "(and check it with SHA256SUMS)")
    assert not list((tmp_path / "c2").glob("*/*")) and len(list((tmp_path / "tmp").iterdir())) == 1


def test_make_sfx_is_deterministic_and_refuses_a_wrong_tarball(sfx: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_sfx(tmp_path / f"{TOP}.tar.gz", again, "9.9", "x86_64")
    assert again.read_bytes() == sfx.read_bytes()
    stub = sfx.read_bytes().split(b"\n")
    skip = int(next(line for line in stub if line.startswith(b"skip=")).removeprefix(b"skip="))
    assert sfx.read_bytes()[skip - 1:] == (tmp_path / f"{TOP}.tar.gz").read_bytes()
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as tar:
        info = tarfile.TarInfo("other/prog")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(SystemExit, match="not one folder holding imaging-utility"):
        make_sfx(wrong, tmp_path / "x", "9.9", "x86_64")
