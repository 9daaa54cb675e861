"""GPT rewritten for a larger or smaller disk (and with fresh identifiers), judged by sgdisk -v and sfdisk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import need_tools
from imaging_utility.blocks import BytesSource
from imaging_utility.devices.source import FileSource
from imaging_utility.partitions import read_partitions
from imaging_utility.partitions.rewrite import gpt_writes, mbr_writes, min_target_size, misfits

MiB = 1 << 20


def _gpt_disk(path: Path) -> None:
    need_tools("sgdisk", "sfdisk")
    path.write_bytes(os.urandom(40 * MiB))
    subprocess.run(["sgdisk", "-U", "11111111-2222-3333-4444-555555555555", "-n", "1:1M:+8M", "-t", "1:ef00",
                    "-n", "2:0:+20M", "-t", "2:8300", "-c", "2:data", "-A", "2:set:2", str(path)],
                   check=True, capture_output=True)


def _rewrite(src: Path, out: Path, size: int, new_ids: bool = False) -> None:
    with FileSource(str(src)) as source:
        table = read_partitions(source)
        writes = gpt_writes(source, table, size, new_ids=new_ids)
        data = bytearray(size)
        keep = min(size, source.size)
        data[:keep] = src.read_bytes()[:keep]
    for offset, chunk in writes:
        data[offset:offset + len(chunk)] = chunk
    out.write_bytes(bytes(data))


def _sfdisk(path: Path) -> list[str]:
    out = subprocess.run(["sfdisk", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split(" : ", 1)[-1] for line in out.splitlines() if not line.startswith(("device:", "last-lba:"))]


@pytest.mark.parametrize("size_mib", [40, 64, 30])
def test_gpt_fits_the_target_size(tmp_path: Path, size_mib: int) -> None:
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    _gpt_disk(src)
    _rewrite(src, out, size_mib * MiB)
    check = subprocess.run(["sgdisk", "-v", str(out)], capture_output=True, text=True).stdout
    assert "No problems found" in check, check
    assert _sfdisk(out) == _sfdisk(src)
    table = read_partitions(FileSource(str(out)))
    assert table.gpt is not None and table.gpt.backup_ok
    assert table.gpt.alternate_lba == size_mib * MiB // 512 - 1
    assert table.gpt.last_usable_lba == size_mib * MiB // 512 - 34
    if size_mib > 40:  # the old backup header, now in free space, is gone
        assert out.read_bytes()[40 * MiB - 512:40 * MiB - 504] != b"EFI PART"


def test_new_ids(tmp_path: Path) -> None:
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    _gpt_disk(src)
    _rewrite(src, out, 40 * MiB, new_ids=True)
    assert "No problems found" in subprocess.run(["sgdisk", "-v", str(out)], capture_output=True, text=True).stdout
    a, b = read_partitions(FileSource(str(src))), read_partitions(FileSource(str(out)))
    assert a.disk_id != b.disk_id
    assert [(p.offset, p.length, p.type_id, p.name, p.attributes) for p in a.partitions] == \
        [(p.offset, p.length, p.type_id, p.name, p.attributes) for p in b.partitions]
    assert not {p.uuid for p in a.partitions} & {p.uuid for p in b.partitions}


def test_fit_checks(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    _gpt_disk(src)
    table = read_partitions(FileSource(str(src)))
    need = min_target_size(table)
    assert need == (2048 + 8 * 2048 + 20 * 2048 + 33) * 512  # last partition, then the backup array and header
    assert misfits(table, need) == []
    assert "partition 2 ends at byte" in misfits(table, need - 512)[0]


def test_mbr_keeps_its_table_and_can_get_a_new_signature() -> None:
    disk = bytearray(8 * MiB)
    disk[0x1B8:0x1BC] = b"\x78\x56\x34\x12"
    disk[0x1BE + 4] = 0x83
    disk[0x1BE + 8:0x1BE + 16] = (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little")
    disk[510:512] = b"\x55\xaa"
    src = BytesSource(bytes(disk))
    table = read_partitions(src)
    assert mbr_writes(src, table) == []
    ((offset, sector),) = mbr_writes(src, table, new_ids=True)
    assert offset == 0 and sector[0x1B8:0x1BC] not in (b"\x78\x56\x34\x12", b"\0\0\0\0")
    assert sector[0x1BC:] == bytes(disk[0x1BC:512])
    assert misfits(table, 5 * MiB) == [] and misfits(table, 5 * MiB - 512)
