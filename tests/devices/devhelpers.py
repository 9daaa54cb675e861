"""Helpers for the device tests: test disks, partition tables, mounts and the EIO FUSE file.

Every helper that changes system state is a context manager that undoes it in
``finally``, so a failing test leaves no mount or FUSE process behind (loop
devices are detached by the ``loopdev`` fixture afterwards).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import need_tools

EIO_FUSE = Path(__file__).with_name("eio_fuse.py")
SLOW_FUSE = Path(__file__).with_name("slow_fuse.py")


def random_file(path: Path, size: int, seed: int = 1) -> bytes:
    """Write ``size`` random (never all-zero per sector) bytes to ``path`` and return them."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def sfdisk(target: Path | str, script: str) -> None:
    """Write a partition table; on a 4Kn table, run it on the 4096-byte-sector loop device."""
    need_tools("sfdisk")
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(target)],
                   input=script, text=True, check=True, capture_output=True)


def partitions(dev: str, count: int) -> list[str]:
    """The ``count`` partition nodes of loop device ``dev`` (attached with partscan).

    Kernels built without partition parsers (this CI's VM) never create them from
    ``losetup -P``; then ``partx -a`` adds them from user space with BLKPG.
    """
    nodes = [f"{dev}p{i}" for i in range(1, count + 1)]
    deadline = time.monotonic() + 2.0
    while not all(os.path.exists(n) for n in nodes):
        if time.monotonic() > deadline:
            need_tools("partx")
            subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
            break
        time.sleep(0.05)
    deadline = time.monotonic() + 5.0
    while not all(os.path.exists(n) for n in nodes):
        assert time.monotonic() < deadline, f"partitions of {dev} did not appear: {nodes}"
        time.sleep(0.05)
    return nodes


def mkfs_ext4(target: str | Path) -> None:
    need_tools("mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(target)], check=True, capture_output=True)


@contextmanager
def mounted(dev: str, mountpoint: Path, read_only: bool = False) -> Iterator[Path]:
    need_tools("mount", "umount")
    mountpoint.mkdir(exist_ok=True)
    opts = ["-o", "ro"] if read_only else []
    subprocess.run(["mount", *opts, dev, str(mountpoint)], check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextmanager
def eio_fuse(backing: Path, mountpoint: Path, bad_sectors: set[int], sector_size: int = 512) -> Iterator[str]:
    """Mount the test FUSE filesystem; yields the path of its file, which fails ``bad_sectors``."""
    with _fuse([str(EIO_FUSE), str(backing), str(mountpoint), str(sector_size),
                ",".join(map(str, sorted(bad_sectors)))], mountpoint) as disk:
        yield disk


@contextmanager
def slow_fuse(mountpoint: Path, size: int, delay_file: Path) -> Iterator[str]:
    """Mount a FUSE file of ``size`` bytes whose every read sleeps the seconds written in ``delay_file``."""
    with _fuse([str(SLOW_FUSE), str(mountpoint), str(size), str(delay_file)], mountpoint) as disk:
        yield disk


@contextmanager
def _fuse(args: list[str], mountpoint: Path) -> Iterator[str]:
    need_tools("fusermount3")
    mountpoint.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    disk = mountpoint / "disk"
    try:
        deadline = time.monotonic() + 10
        while not disk.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                raise AssertionError(f"FUSE test filesystem did not come up: {out}")
            time.sleep(0.05)
        yield str(disk)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
