"""Fixtures for the whole-disk tests: the two real disks (built once per session), attached read-only as
loop devices, and one backup set made from them.  (Not a conftest.py, see tests/serve/serve_helpers.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup.diskbuild import Disk, MiB, make_gpt_disk, make_mbr_disk
from conftest import cli, need_root, need_tools

TOOLS = ("sgdisk", "sfdisk", "losetup", "mkntfs", "ntfs-3g", "ntfsfix", "mke2fs", "e2fsck", "debugfs",
         "mkfs.vfat", "fsck.vfat", "mcopy", "mkswap", "partx")


@dataclass
class BackupSet:
    path: Path
    disks: dict[str, Disk]  # "gpt" / "mbr" -> the disk
    names: dict[str, str]  # "gpt" / "mbr" -> the disk's name in the set
    devices: dict[str, str]  # "gpt" / "mbr" -> the source loop device


def attach(path: Path | str, *, read_only: bool = False, sector_size: int = 512) -> str:
    cmd = ["losetup", "--find", "--show", "--sector-size", str(sector_size), *(["-r"] if read_only else []),
           str(path)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def detach(dev: str) -> None:
    subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def sha256_dev(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def manifest(set_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((set_dir / "backup.manifest.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Disk]:
    need_root()
    need_tools(*TOOLS)
    work = tmp_path_factory.mktemp("disks")
    return {"gpt": make_gpt_disk(work), "mbr": make_mbr_disk(work)}


@pytest.fixture(scope="session")
def backup_set(disks: dict[str, Disk], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupSet]:
    """``backup-disk`` of both disks, each attached read-only as a loop device, into one set."""
    devices = {kind: attach(d.path, read_only=True) for kind, d in disks.items()}
    try:
        set_dir = tmp_path_factory.mktemp("set") / "set"
        cli("backup-disk", devices["gpt"], devices["mbr"], set_dir)
        names = {kind: os.path.basename(dev) for kind, dev in devices.items()}
        yield BackupSet(set_dir, disks, names, devices)
    finally:
        for dev in devices.values():
            detach(dev)


@pytest.fixture
def loops() -> Iterator[object]:
    """Factory: ``loops(path, read_only=False, sector_size=512) -> '/dev/loopN'``.  Detached after the test,
    with the partitions a restore made the kernel add (detaching alone would leave them behind)."""
    need_root()
    need_tools("losetup", "partx")
    made: list[str] = []

    def make(path: Path | str, read_only: bool = False, sector_size: int = 512) -> str:
        dev = attach(path, read_only=read_only, sector_size=sector_size)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        detach(dev)


def blank_target(tmp_path: Path, size: int, name: str = "target.raw") -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path
