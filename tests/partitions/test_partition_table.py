"""MBR (with an extended chain) and GPT parsing, checked against sgdisk and util-linux partx."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import need_tools
from imaging_utility.blocks import BytesSource, read_at
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import NotFoundError
from imaging_utility.partitions import partition_source, read_partitions

MiB = 1024 * 1024
ENTRY = struct.Struct("<B3sB3sII")


def _table(entries: list[tuple[int, int, int]], disk_sig: int = 0) -> bytes:
    """One MBR/EBR sector: (type, lba, count) entries, boot signature."""
    sector = bytearray(512)
    struct.pack_into("<I", sector, 0x1B8, disk_sig)
    for i, (ptype, lba, count) in enumerate(entries):
        ENTRY.pack_into(sector, 0x1BE + 16 * i, 0, b"\0\0\0", ptype, b"\0\0\0", lba, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _mbr_disk(cyclic: bool = False) -> bytearray:
    disk = bytearray(64 * MiB)
    disk[0:512] = _table([(0x83, 2048, 8192), (0x05, 16384, 65536), (0x07, 90112, 8192)], 0x1234ABCD)
    disk[16384 * 512:16385 * 512] = _table([(0x83, 2048, 4096), (0x05, 16384, 10240)])
    disk[32768 * 512:32769 * 512] = _table([(0x07, 2048, 4096), (0x0F, 32768, 10240)])
    disk[49152 * 512:49153 * 512] = _table([(0x83, 2048, 8192)] + ([(0x05, 0, 10240)] if cyclic else []))
    for lba in (2048, 18432, 34816, 51200, 90112):  # a marker at the start of each partition
        disk[lba * 512:lba * 512 + 8] = struct.pack("<Q", lba)
    return disk


EXPECTED_MBR = [(1, 2048, 8192), (3, 90112, 8192), (5, 18432, 4096), (6, 34816, 4096), (7, 51200, 8192)]


def _partx_view(path: Path) -> dict[int, tuple[int, int]]:
    """{number: (start sector, sectors)} as util-linux (libblkid, Linux numbering) reads the disk.

    The kernel's own scanner (``losetup -P``) would be the first choice, but this machine's kernel does
    not create partition devices for loop devices, so the independent reference is partx."""
    need_tools("partx")
    out = subprocess.run(["partx", "-g", "-o", "NR,START,SECTORS", str(path)], capture_output=True,
                         text=True, check=True).stdout
    rows = [tuple(int(v) for v in line.split()) for line in out.splitlines()]
    return {n: (start, count) for n, start, count in rows}


def test_mbr_primary_extended_and_logical_numbering() -> None:
    src = BytesSource(bytes(_mbr_disk()))
    table = read_partitions(src)
    assert (table.scheme, table.disk_id) == ("mbr", "0x1234abcd")
    assert [(p.number, p.offset // 512, p.length // 512) for p in table.partitions] == EXPECTED_MBR
    assert table.partitions[0].type == "0x83 (Linux)" and table.partitions[1].type_id == "0x07"
    for p in table.partitions:
        assert read_at(partition_source(src, p.number), 0, 8) == struct.pack("<Q", p.offset // 512)


def test_mbr_matches_partx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mbr.raw"
    path.write_bytes(_mbr_disk())
    reference = _partx_view(path)
    assert reference.pop(2) == (16384, 65536)  # partx lists the extended container itself; we do not
    assert reference == {n: (start, count) for n, start, count in EXPECTED_MBR}


def test_cyclic_ebr_chain_terminates() -> None:
    table = read_partitions(BytesSource(bytes(_mbr_disk(cyclic=True))))
    assert [(p.number, p.offset // 512, p.length // 512) for p in table.partitions] == EXPECTED_MBR


def _sgdisk_disk(path: Path) -> None:
    subprocess.run(["truncate", "-s", "40M", str(path)], check=True)
    subprocess.run(["sgdisk", "-U", "11111111-2222-3333-4444-555555555555",
                    "-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:EFI system",
                    "-n", "3:0:+10M", "-t", "3:0700", "-c", "3:données",
                    "-n", "2:0:0", "-t", "2:8300", "-u", "2:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    str(path)], check=True, capture_output=True)


def test_gpt_matches_sgdisk_and_partx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("sgdisk")
    path = tmp_path / "gpt.raw"
    _sgdisk_disk(path)
    with FileSource(str(path)) as src:
        table = read_partitions(src)
    assert (table.scheme, table.disk_id) == ("gpt", "11111111-2222-3333-4444-555555555555")
    assert [p.number for p in table.partitions] == [1, 2, 3]  # numbered by entry slot, like Linux
    for p in table.partitions:
        info = subprocess.run(["sgdisk", "-i", str(p.number), str(path)], capture_output=True, text=True,
                              check=True).stdout
        first = int(info.split("First sector: ")[1].split()[0])
        last = int(info.split("Last sector: ")[1].split()[0])
        assert (p.offset, p.length) == (first * 512, (last - first + 1) * 512)
        assert p.uuid == info.split("Partition unique GUID: ")[1].split()[0].lower()
        assert f"'{p.name}'" in info
    assert table.partitions[1].uuid == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert table.partitions[2].name == "données"
    assert "Linux filesystem data" in table.partitions[1].type
    assert table.partitions[0].type_id == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    assert _partx_view(path) == {p.number: (p.offset // 512, p.length // 512) for p in table.partitions}


def test_gpt_backup_header_and_fallbacks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("sgdisk")
    path = tmp_path / "gpt.raw"
    _sgdisk_disk(path)
    good = read_partitions(FileSource(str(path))).partitions
    disk = bytearray(path.read_bytes())
    disk[512 + 100] ^= 0xFF  # past header_size (92): not covered by the CRC, ignored
    assert read_partitions(BytesSource(bytes(disk))).partitions == good
    disk[512 + 40] ^= 0xFF  # first_usable_lba: primary header CRC now fails -> backup header
    assert read_partitions(BytesSource(bytes(disk))).partitions == good
    disk[len(disk) - 512 + 40] ^= 0xFF  # backup broken too: only the protective MBR is left
    table = read_partitions(BytesSource(bytes(disk)))
    assert table.scheme == "mbr" and [p.type_id for p in table.partitions] == ["0xee"]
    entries = bytearray(path.read_bytes())
    entries[1024 + 130] ^= 0xFF  # entry array CRC fails in the primary; the backup array is intact
    assert read_partitions(BytesSource(bytes(entries))).partitions == good


def test_no_table_and_not_found_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("mkntfs")
    assert read_partitions(BytesSource(bytes(MiB))).scheme is None
    vbr = tmp_path / "ntfs.raw"
    subprocess.run(["truncate", "-s", "8M", str(vbr)], check=True)
    subprocess.run(["mkntfs", "-F", "-f", "-q", str(vbr)], check=True, capture_output=True)
    with FileSource(str(vbr)) as src:  # a bare NTFS volume ends its boot sector in 55 aa too
        table = read_partitions(src)
        assert table.scheme is None and table.partitions == []
        with pytest.raises(NotFoundError, match="no MBR or GPT partitions"):
            partition_source(src, 1)
    src = BytesSource(bytes(_mbr_disk()))
    with pytest.raises(NotFoundError) as info:
        partition_source(src, 4)
    message = str(info.value)
    assert "partition 4 not found; available: 1: 4194304 bytes at 1048576" in message
    assert "\n" not in message and "7: " in message


@given(st.binary(min_size=1024, max_size=1024), st.lists(
    st.tuples(st.sampled_from([0x00, 0x05, 0x07, 0x0F, 0x83, 0x85, 0xEE]),
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=4, max_size=4))
def test_garbage_never_crashes(noise: bytes, entries: list[tuple[int, int, int]]) -> None:
    disk = bytearray(noise * 64)  # 64 KiB
    disk[0:512] = _table(entries)
    for lba in (1, 8, 64):  # extended chains and GPT headers pointing into noise
        if lba * 512 + 512 <= len(disk):
            disk[lba * 512 + 510:lba * 512 + 512] = b"\x55\xaa"
    src = BytesSource(bytes(disk))
    table = read_partitions(src)
    for p in table.partitions:
        assert 0 <= p.offset < src.size and 0 < p.length <= src.size - p.offset
        partition_source(src, p.number, table)
