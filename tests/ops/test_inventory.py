"""What the GUI's picker and the restore confirmation show, from real loop devices, partition tables,
filesystems and mounts."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import need_tools
from devices.devhelpers import mounted, partitions, sfdisk
from imaging_utility.devices.inventory import find_block_device, list_block_devices
from imaging_utility.errors import RefusedError
from imaging_utility.ops.inventory import list_volumes, probe
from imaging_utility.ops.restore_target import inspect_target

MiB = 1 << 20
TABLE = "label: gpt\nsize=8MiB, name=one\nsize=6MiB, name=two\n"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    need_tools("mkfs.ext4", "mkfs.vfat")
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
    sfdisk(path, TABLE)
    for name, start, size in (("p1", 2048, 8 * MiB), ("p2", 2048 + 8 * MiB // 512, 6 * MiB)):
        part = tmp_path / f"{name}.raw"
        with open(part, "wb") as f:
            f.truncate(size)
        if name == "p1":
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "alpha", str(part)], check=True, capture_output=True)
        else:
            subprocess.run(["mkfs.vfat", "-n", "BETA", str(part)], check=True, capture_output=True)
        subprocess.run(["dd", f"if={part}", f"of={path}", "bs=512", f"seek={start}", "conv=notrunc",
                        "status=none"], check=True)
    return path


def test_partitions_without_nodes_come_from_the_table(disk: Path, loopdev: Callable[..., str]) -> None:
    dev = loopdev(disk)
    listed = [d for d in list_block_devices() if d.path == dev]
    assert len(listed) == 1 and listed[0].transport == "loop" and listed[0].backing_file == str(disk)
    assert listed[0].size == 16 * MiB and not listed[0].partitions
    (vol,) = list_volumes(listed)
    vol = probe(vol)
    assert [(p.name, p.offset, p.size, p.fs, p.label) for p in vol.partitions] == [
        (f"{Path(dev).name} #1", MiB, 8 * MiB, "ext4", "alpha"),
        (f"{Path(dev).name} #2", 9 * MiB, 6 * MiB, "fat12", "BETA"),
    ]
    assert all(p.windowed and p.used and 0 < p.used < p.size for p in vol.partitions)
    assert "--offset 1048576 --length 8388608" in vol.partitions[0].note


def test_partition_nodes_mounts_and_restore_target(disk: Path, tmp_path: Path, loopdev: Callable[..., str]) -> None:
    dev = loopdev(disk, partscan=True)
    p1, _ = partitions(dev, 2)
    found = find_block_device(p1)
    assert found is not None and found.partition == 1 and found.start == MiB
    with mounted(p1, tmp_path / "mnt"):
        (vol,) = list_volumes([d for d in list_block_devices() if d.path == dev])
        assert vol.read_write and vol.mounts == (f"rw {tmp_path / 'mnt'}",)
        vol = probe(vol)
        part = vol.partitions[0]
        assert part.read_write and part.fs == "ext4" and part.label == "alpha" and part.used
        with pytest.raises(RefusedError, match=r"is in use: partition .* mounted read-write"):
            inspect_target(dev, 4 * MiB)
    target = inspect_target(dev, 12 * MiB)
    assert target.needs_confirmation and target.lines[0].startswith(f"{dev}: 16.00 MiB block device (loop")
    assert any("ext4 'alpha'" in line for line in target.lines) and any("BETA" in line for line in target.lines)
    with pytest.raises(RefusedError, match=f"holds {16 * MiB} bytes, the image needs {32 * MiB}"):
        inspect_target(dev, 32 * MiB)
    existing = tmp_path / "exists.raw"
    existing.write_bytes(b"x")
    with pytest.raises(RefusedError, match="already exists; use --force"):
        inspect_target(str(existing), MiB)
    assert inspect_target(str(existing), MiB, force=True).kind == "file"
    assert inspect_target(str(tmp_path / "new.raw"), MiB).kind == "new"
