"""Rewrite a disk's partition table for a target of another size (or with fresh identifiers).

Rules: ``shared/reference/gpt-mbr-rewrite.md`` §4 (after UEFI 2.10 §5.3 and gptfdisk ``GPTData::Verify``):
the primary header keeps its LBA, entries and first usable LBA and gets the new alternate and last usable
LBA; the backup array and header go to the target's end; both header CRCs are recomputed (and the array
CRC when identifiers change); the protective MBR covers the new size.  An MBR (with or without an
extended chain) has no size field: it is kept as it is, and only has to fit.

The result is a list of ``(byte offset, bytes)`` writes for the target; nothing here does I/O on it.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib

from ..blocks import BlockSource, read_at
from .c_table import (
    GPT_HEADER_CRC_OFFSET,
    GPT_MIN_ENTRY_ARRAY,
    GPT_REVISION,
    GPT_SIGNATURE,
    MBR_DISK_SIGNATURE_OFFSET,
    MBR_MAX_SECTORS,
    MBR_SIZE,
    MBR_TABLE_OFFSET,
    MBR_TYPE_GPT_PROTECTIVE,
    c_disk_signature,
    c_gpt_header,
    c_mbr_entry,
)
from .table import PartitionTable, gpt_entry_array

Write = tuple[int, bytes]


def entry_sectors(table: PartitionTable) -> int:
    """Sectors one GPT entry array takes (at least 16 KiB, UEFI §5.3.1)."""
    assert table.gpt is not None
    size = max(table.gpt.entry_count * table.gpt.entry_size, GPT_MIN_ENTRY_ARRAY)
    return -(-size // table.sector_size)


def min_target_size(table: PartitionTable) -> int:
    """The smallest disk, in bytes, that holds every partition (and for GPT both table copies)."""
    ss = table.sector_size
    end = max([p.offset + p.table_length for p in table.partitions] + [o + ss for o in table.ebrs] + [ss])
    if table.gpt is not None:
        end = max(end, (table.gpt.first_usable_lba * ss)) + (entry_sectors(table) + 1) * ss
    return end


def misfits(table: PartitionTable, target_size: int) -> list[str]:
    """Why the partitions cannot all live on a disk of ``target_size`` bytes (empty when they can)."""
    ss = table.sector_size
    sectors = target_size // ss
    if table.gpt is not None:
        last_usable = sectors - 2 - entry_sectors(table)
        limit, what = (last_usable + 1) * ss, f"the last usable sector of the target ({last_usable})"
    else:
        limit, what = sectors * ss, f"the target's end ({target_size} bytes)"
    out = [f"partition {p.number} ends at byte {p.offset + p.table_length}, past {what}"
           for p in table.partitions if p.offset + p.table_length > limit]
    out += [f"the extended-partition record at byte {o} lies past {what}" for o in table.ebrs if o + ss > limit]
    return out


def gpt_writes(source: BlockSource, table: PartitionTable, target_size: int, *, new_ids: bool = False) -> list[Write]:
    """Protective MBR, primary header and entries, backup entries and header for a disk of ``target_size``
    bytes; plus zeros over the source's old backup header when it now lies inside the target."""
    g = table.gpt
    if g is None:
        raise ValueError("not a GPT table")
    ss = table.sector_size
    n = target_size // ss
    esec = entry_sectors(table)
    last_usable = n - 2 - esec
    array = bytearray(gpt_entry_array(source, table))
    array += bytes(esec * ss - len(array))  # the reserved space after the entries is zero
    header = bytearray(read_at(source, g.header_lba * ss, ss))
    disk_guid = header[56:72]
    if new_ids:
        disk_guid = bytearray(uuid.uuid4().bytes_le)
        for index in range(g.entry_count):
            at = index * g.entry_size
            if array[at:at + 16] != bytes(16):
                array[at + 16:at + 32] = uuid.uuid4().bytes_le
    used = g.entry_count * g.entry_size
    array_crc = zlib.crc32(array[:used])
    primary_entries = g.entry_lba if g.primary_ok else 2
    backup_entries = n - 1 - esec

    def make(my_lba: int, alternate: int, entry_lba: int) -> bytes:
        out = bytearray(ss)
        c_gpt_header.pack_into(out, 0, GPT_SIGNATURE, GPT_REVISION, c_gpt_header.size, 0, 0, my_lba, alternate,
                               g.first_usable_lba, last_usable, bytes(disk_guid), entry_lba, g.entry_count,
                               g.entry_size, array_crc)
        crc = zlib.crc32(out[:c_gpt_header.size])
        struct.pack_into("<I", out, GPT_HEADER_CRC_OFFSET, crc)
        return bytes(out)

    writes: list[Write] = [(0, protective_mbr(source, table, target_size)),
                           (ss, make(1, n - 1, primary_entries)),
                           (primary_entries * ss, bytes(array)),
                           (backup_entries * ss, bytes(array)),
                           ((n - 1) * ss, make(n - 1, 1, backup_entries))]
    old_backup = source.size // ss - 1
    if old_backup * ss + ss <= backup_entries * ss and old_backup > primary_entries + esec:
        writes.append((old_backup * ss, bytes(ss)))  # a stale "EFI PART" in free space confuses scanners
    return writes


def protective_mbr(source: BlockSource, table: PartitionTable, target_size: int) -> bytes:
    """Sector 0 with the 0xEE record resized for the target, when it covered the whole source disk."""
    ss = table.sector_size
    sector = bytearray(read_at(source, 0, MBR_SIZE))
    old_n, new_n = source.size // ss, target_size // ss
    for i in range(4):
        at = MBR_TABLE_OFFSET + i * c_mbr_entry.size
        status, chs1, ptype, _chs2, lba, count = c_mbr_entry.unpack_from(sector, at)
        if ptype != MBR_TYPE_GPT_PROTECTIVE or lba != 1:
            continue
        if count == MBR_MAX_SECTORS or lba + count >= old_n:  # it spanned the disk: keep it spanning
            count = min(new_n - 1, MBR_MAX_SECTORS)
            c_mbr_entry.pack_into(sector, at, status, chs1, ptype, _chs(count), lba, count)
    return bytes(sector)


def _chs(last_lba: int) -> bytes:
    """CHS of ``last_lba`` with 255 heads and 63 sectors, or FE FF FF beyond cylinder 1023 (as sgdisk)."""
    cylinder, rest = divmod(last_lba, 255 * 63)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, 63)
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def mbr_writes(source: BlockSource, table: PartitionTable, *, new_ids: bool = False) -> list[Write]:
    """An MBR disk keeps its table; with ``new_ids`` it gets a fresh random disk signature."""
    if not new_ids:
        return []
    sector = bytearray(read_at(source, 0, MBR_SIZE))
    signature = 0
    while signature == 0:
        signature = int.from_bytes(os.urandom(4), "little")
    c_disk_signature.pack_into(sector, MBR_DISK_SIGNATURE_OFFSET, signature)
    return [(0, bytes(sector))]
