"""One run per DEST: two image runs (or two restores) on one target at once — the second stops at once,
exit 9, naming the first; the first finishes with a correct image."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, need_tools
from imagetools import run_cli
from imaging_utility.errors import RefusedError
from imaging_utility.image.reader import open_image
from imaging_utility.storage.destlock import DestLock

MIB = 1 << 20


def _start_slow_image(src: Path, dest: Path, *extra: str) -> subprocess.Popen[str]:
    """An image run throttled to 256 KiB/s: it holds DEST for as long as the test needs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K", "--max-throughput", "256K",
         "--hash", "sha256", *extra, str(src), str(dest)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = Path(f"{dest}.001") if "--split-size" in extra else dest
    deadline = time.monotonic() + 60
    while not (first.exists() and first.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("split", [False, True])
def test_second_image_run_on_one_dest_is_refused_naming_the_first(tmp_path: Path, split: bool) -> None:
    data = random.Random(4).randbytes(5 * MIB)
    src = tmp_path / "src"
    src.write_bytes(data)
    dest = tmp_path / "img"
    extra = ("--split-size", "256K") if split else ()
    first = _start_slow_image(src, dest, "--resume", *extra)
    try:
        for mode in ("--resume", "--force"):
            started = time.monotonic()
            second = cli("image", "--chunk-size", "64K", "--hash", "sha256", mode, *extra, src, dest, check=None)
            assert first.poll() is None, "the first run ended before the second one was tried"
            assert second.returncode == 9, second.stderr
            assert time.monotonic() - started < 30
            err = second.stderr.strip()
            assert len(err.splitlines()) == 1 and f"pid {first.pid}: " in err and "imaging_utility image" in err
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 130, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the first run's partial image was never touched by the refused runs: it continues to a right image
    cli("image", "--chunk-size", "64K", "--hash", "sha256", "--resume", *extra, src, dest)
    with open_image(str(dest)) as reader:
        assert reader.read(0, reader.size) == data
        assert reader.verify().ok


def test_restore_target_in_use_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(random.Random(5).randbytes(MIB))
    assert run_cli("image", "--chunk-size", "64K", src, tmp_path / "img")[0] == 0
    target = tmp_path / "target.raw"
    target.write_bytes(b"precious")
    with DestLock("restore target") as held:
        held.add_path(str(target))
        code, _, err = run_cli("restore", "--force", tmp_path / "img", target)
        assert code == 9 and f"pid {os.getpid()}: " in err and len(err.strip().splitlines()) == 1
        assert target.read_bytes() == b"precious"  # not truncated by the refused run
    assert run_cli("restore", "--force", tmp_path / "img", target)[0] == 0
    assert target.read_bytes() == src.read_bytes()


def test_lock_is_released_and_reentrant_for_its_own_files(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with DestLock() as a:
        a.add_path(str(f))
        a.add_path(str(f))  # the same file again: already ours
        fd = os.open(f, os.O_RDONLY)
        try:
            a.add_fd(fd, str(f))
        finally:
            os.close(fd)
        with pytest.raises(RefusedError, match=f"pid {os.getpid()}"):
            DestLock().add_path(str(f))
    with DestLock() as b:
        b.add_path(str(f))


def test_partition_restore_target_in_use_is_refused(tmp_path: Path) -> None:
    """``restore --partition N`` into a file locks it as a whole restore does; ``restore -`` too."""
    need_tools("sgdisk")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(random.Random(6).randbytes(8 * MIB))
    subprocess.run(["sgdisk", "-n1:2048:+4M", str(disk)], check=True, capture_output=True)
    assert run_cli("image", disk, tmp_path / "img")[0] == 0
    target = tmp_path / "p1.raw"
    target.write_bytes(b"precious")
    with DestLock("restore target") as held:
        held.add_path(str(target))
        code, _, err = run_cli("restore", "--force", "--partition", "1", tmp_path / "img", target)
        assert code == 9 and f"pid {os.getpid()}: " in err and len(err.strip().splitlines()) == 1, err
        with open(tmp_path / "img", "rb") as stdin:
            proc = subprocess.run([sys.executable, "-m", "imaging_utility", "restore", "--force", "-", str(target)],
                                  stdin=stdin, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 9 and f"pid {os.getpid()}: " in proc.stderr, proc.stderr
        assert target.read_bytes() == b"precious"
    assert run_cli("restore", "--force", "--partition", "1", tmp_path / "img", target)[0] == 0
    assert target.read_bytes() == disk.read_bytes()[MIB : 5 * MIB]
