"""Windows dynamic disks (LDM): the partition the table shows (MBR type 0x42, the GPT LDM types) holds
volumes laid out by the LDM database, so the filesystem at its start is not its map: a spanned volume's
NTFS there claims bytes that belong to other volumes.  Such a partition is kept in full and said so, and
``ls``/``extract`` refuse it in one line."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.extents import ExtentKind
from imaging_utility.filesystems import allocation_map

MiB = 1 << 20


def _disk(tmp: Path, scheme: str) -> tuple[Path, bytes]:
    """An 80 MiB disk, one dynamic partition from 1 MiB: NTFS made for 40 MiB at its start (a spanned
    volume's first 20 MiB extent, as the LDM database would say), and another volume's random bytes right
    after that extent wherever the NTFS has free clusters (its metadata left whole, so it maps).  Returns
    the disk and the 20 MiB after the extent."""
    need_tools("mkntfs", "sfdisk", "sgdisk")
    disk = tmp / "disk.raw"
    disk.write_bytes(bytes(80 * MiB))
    if scheme == "mbr":
        subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, size=60M, type=42\n", check=True)
    else:
        subprocess.run(["sgdisk", "-n1:2048:+60M", "-t1:AF9B60A0-1431-4F62-BC68-3311714A69AD", str(disk)],
                       check=True, capture_output=True)
    ntfs = tmp / "ntfs.raw"
    fsbuild.make_ntfs(ntfs, 40, None)
    data = bytearray(ntfs.read_bytes())
    with FileSource(str(ntfs)) as src:
        _info, amap = allocation_map(src)
    rnd = random.Random(9)
    for ext in amap.extents():  # the other volume's bytes: only where this NTFS has free clusters
        end = ext.offset + ext.length
        if ext.kind is ExtentKind.UNALLOCATED and end > 20 * MiB:
            start = max(ext.offset, 20 * MiB)
            data[start:end] = rnd.randbytes(end - start)
    with open(disk, "r+b") as f:
        f.seek(MiB)
        f.write(data)
    return disk, bytes(data[20 * MiB :])


@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_dynamic_partition_is_kept_in_full(scheme: str, tmp_path: Path) -> None:
    disk, other = _disk(tmp_path, scheme)
    shown = cli("info", disk)
    assert "ldm (not mapped)" in shown.stdout, shown.stdout
    image = tmp_path / "disk.zst"
    run = cli("image", "--used-only", disk, image)
    assert "partition 1 (ldm): a Windows dynamic disk (LDM) partition" in run.stderr, run.stderr
    restored = tmp_path / "back.raw"
    cli("restore", image, restored)
    with open(restored, "rb") as f:
        f.seek(21 * MiB)
        assert f.read(20 * MiB) == other  # the other volume's bytes, where the NTFS has free clusters
    listed = cli("ls", "--partition", "1", image, "/", check=4)
    assert "Windows dynamic disk (LDM) partition" in listed.stderr and listed.stderr.count("\n") == 1
    cli("ls", "--offset", str(MiB), "--length", str(20 * MiB), disk, "/")  # a simple volume: read by its place
