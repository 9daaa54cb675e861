"""MBR and GPT partition tables of a ``BlockSource``, numbered as Linux numbers them.

Specs: UEFI 2.10 §5.2 (legacy/protective MBR) and §5.3 (GPT header and entry array, CRC32 rules);
the MBR extended-partition chain as Linux walks it (``block/partitions/msdos.c``, ``parse_extended``):
primaries keep their slot number 1–4, logical partitions are numbered 5, 6, … in chain order, and the
extended container itself is not listed.

Why not ``dissect.volume.disk.Disk`` directly: in dissect.volume 3.18 GPT partition sizes are one
sector short (``last_lba`` is inclusive), logical MBR partitions are numbered by their EBR slot instead
of 5+, EBR chains have no loop guard, and GPT CRCs and the backup header are not checked.  Those are the
only parts this module needs, so it parses them thinly with ``struct`` and reuses dissect's partition type
names.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from uuid import UUID

from dissect.volume.disk.partition import translate_partition_type

from ..blocks import BlockSource, WindowSource, read_at
from ..errors import NotFoundError

# --- on-disk structures (little-endian) -------------------------------------------------------------
MBR_SIZE = 512
MBR_DISK_SIGNATURE_OFFSET = 0x1B8
MBR_TABLE_OFFSET = 0x1BE
MBR_BOOT_SIGNATURE = b"\x55\xaa"
# status, chs_first, type, chs_last, lba_first, sectors
c_mbr_entry = struct.Struct("<B3sB3sII")
MBR_TYPE_EMPTY = 0x00
MBR_TYPE_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
MAX_LOGICAL = 256  # Linux stops at its partition limit too; this also bounds a cyclic chain

GPT_SIGNATURE = b"EFI PART"
# signature, revision, header_size, header_crc32, reserved, my_lba, alternate_lba, first_usable_lba,
# last_usable_lba, disk_guid, partition_entry_lba, number_of_partition_entries,
# size_of_partition_entry, partition_entry_array_crc32
c_gpt_header = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_HEADER_CRC_OFFSET = 16
# partition_type_guid, unique_partition_guid, starting_lba, ending_lba, attributes, partition_name
c_gpt_entry = struct.Struct("<16s16sQQQ72s")
GPT_MAX_ENTRY_ARRAY = 4 * 1024 * 1024  # far above the usual 16 KiB; bounds memory on garbage

_VBR_OEM_IDS = (b"NTFS", b"MSDOS", b"MSWIN", b"FAT", b"EXFAT", b"-FVE-FS-", b"SYSLINUX", b"mkfs.fat")


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition; ``offset`` and ``length`` in bytes from the start of the disk."""

    number: int
    offset: int
    length: int
    type: str  # human text, e.g. "0x83 (Linux)" or "0fc63daf-... (Linux filesystem data)"
    type_id: str  # "0x83" for MBR, the type GUID for GPT
    name: str = ""
    uuid: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def describe(self) -> str:
        label = f" '{self.name}'" if self.name else ""
        return f"{self.number}: {self.length} bytes at {self.offset}, {self.type}{label}"


@dataclass(frozen=True, slots=True)
class PartitionTable:
    scheme: str | None  # "mbr", "gpt" or None (no partition table)
    disk_id: str | None  # MBR disk signature as 0x%08x, or the GPT disk GUID
    sector_size: int
    partitions: list[Partition] = field(default_factory=list)

    def get(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        if not self.partitions:
            raise NotFoundError(f"partition {number} not found: the source has no MBR or GPT partitions")
        listing = "; ".join(p.describe() for p in self.partitions)
        raise NotFoundError(f"partition {number} not found; available: {listing}")


def read_partitions(source: BlockSource) -> PartitionTable:
    """Parse the MBR (with its extended chain) or GPT at the start of ``source``.

    Returns a table with ``scheme=None`` when there is no valid MBR/GPT (e.g. a bare filesystem).
    Errors reading the source (``SourceIOError``, ``CorruptImageError``) propagate.
    """
    sector_size = source.sector_size
    mbr = read_at(source, 0, MBR_SIZE)
    entries = _mbr_entries(mbr)
    if entries is None:
        return PartitionTable(None, None, sector_size)
    if any(e[2] == MBR_TYPE_GPT_PROTECTIVE for e in entries):
        candidates = [sector_size] + ([4096] if sector_size == 512 else [])
        for ss in candidates:
            gpt = _read_gpt(source, ss)
            if gpt is not None:
                return gpt
    disk_id = struct.unpack_from("<I", mbr, MBR_DISK_SIGNATURE_OFFSET)[0]
    parts = _mbr_partitions(source, entries, sector_size)
    return PartitionTable("mbr", f"0x{disk_id:08x}", sector_size, parts)


def partition_source(source: BlockSource, number: int, table: PartitionTable | None = None) -> WindowSource:
    """A window over partition ``number`` (1-based, Linux numbering); ``NotFoundError`` lists the others."""
    part = (table or read_partitions(source)).get(number)
    return WindowSource(source, part.offset, part.length)


# --- MBR ------------------------------------------------------------------------------------------
_Entry = tuple[int, bytes, int, bytes, int, int]


def _mbr_entries(sector: bytes) -> list[_Entry] | None:
    """The four table entries, or None when the sector is not an MBR (no signature, a VBR, garbage)."""
    if len(sector) < MBR_SIZE or sector[510:512] != MBR_BOOT_SIGNATURE:
        return None
    entries: list[_Entry] = [
        c_mbr_entry.unpack_from(sector, MBR_TABLE_OFFSET + i * c_mbr_entry.size) for i in range(4)
    ]
    if any(e[0] not in (0x00, 0x80) for e in entries):
        return None  # Linux rejects a table whose boot indicators are not 0x00/0x80
    if any(oem in sector[3:11] for oem in _VBR_OEM_IDS) and not any(e[5] for e in entries):
        return None  # a filesystem boot sector that happens to end in 55 aa
    return entries


def _mbr_partitions(source: BlockSource, entries: list[_Entry], ss: int) -> list[Partition]:
    parts: list[Partition] = []
    extended: tuple[int, int] | None = None
    for slot, (_status, _c1, ptype, _c2, lba, count) in enumerate(entries, start=1):
        if not count or ptype == MBR_TYPE_EMPTY:
            continue
        if ptype in MBR_EXTENDED_TYPES:
            if extended is None:
                extended = (lba, count)
            continue
        parts += _mbr_partition(source, slot, lba * ss, count * ss, ptype)
    if extended is not None:
        _logical_partitions(parts, source, extended[0], extended[1], ss)
    return parts


def _logical_partitions(parts: list[Partition], source: BlockSource, ext_lba: int, ext_count: int,
                        ss: int) -> None:
    """Walk the EBR chain: data entries are relative to their EBR, links to the extended start."""
    number = 5
    ebr_lba, ebr_count = ext_lba, ext_count
    seen: set[int] = set()
    while ebr_lba not in seen and len(seen) < MAX_LOGICAL and ebr_lba * ss + MBR_SIZE <= source.size:
        seen.add(ebr_lba)
        entries = _mbr_entries(read_at(source, ebr_lba * ss, MBR_SIZE))
        if entries is None:
            return
        for i, (_s, _c1, ptype, _c2, lba, count) in enumerate(entries):
            if not count or ptype in MBR_EXTENDED_TYPES:
                continue
            # Linux's sanity checks for the 3rd and 4th entries, which often hold garbage
            if i >= 2 and (lba + count > ebr_count or ebr_lba + lba + count > ext_lba + ext_count):
                continue
            parts += _mbr_partition(source, number, (ebr_lba + lba) * ss, count * ss, ptype)
            number += 1
        link = next((e for e in entries if e[5] and e[2] in MBR_EXTENDED_TYPES), None)
        if link is None:
            return
        ebr_lba, ebr_count = ext_lba + link[4], link[5]


def _mbr_partition(source: BlockSource, number: int, offset: int, length: int, ptype: int) -> list[Partition]:
    if offset >= source.size:
        return []  # a table copied from a larger disk: nothing of this partition is here
    return [Partition(
        number=number, offset=offset, length=min(length, source.size - offset),
        type=translate_partition_type(ptype), type_id=f"0x{ptype:02x}",
    )]


# --- GPT ------------------------------------------------------------------------------------------
def _read_gpt(source: BlockSource, ss: int) -> PartitionTable | None:
    """The primary GPT, else the backup at the last LBA; None when neither is valid."""
    last_lba = source.size // ss - 1
    for lba in (1, last_lba):
        if lba < 1:
            continue
        parsed = _gpt_at(source, lba, ss)
        if parsed is not None:
            return parsed
    return None


def _gpt_at(source: BlockSource, lba: int, ss: int) -> PartitionTable | None:
    if (lba + 1) * ss > source.size or ss < c_gpt_header.size:
        return None
    raw = bytearray(read_at(source, lba * ss, ss))
    (signature, _revision, header_size, header_crc, _reserved, my_lba, _alt_lba, _first_usable,
     _last_usable, disk_guid, entry_lba, n_entries, entry_size, entries_crc) = c_gpt_header.unpack_from(raw)
    if signature != GPT_SIGNATURE or not c_gpt_header.size <= header_size <= ss or my_lba != lba:
        return None
    raw[GPT_HEADER_CRC_OFFSET:GPT_HEADER_CRC_OFFSET + 4] = b"\0\0\0\0"
    if zlib.crc32(raw[:header_size]) != header_crc:
        return None
    array_len = n_entries * entry_size
    if entry_size < c_gpt_entry.size or entry_size % 8 or array_len > GPT_MAX_ENTRY_ARRAY:
        return None
    if entry_lba * ss + array_len > source.size:
        return None
    array = read_at(source, entry_lba * ss, array_len)
    if zlib.crc32(array) != entries_crc:
        return None
    parts: list[Partition] = []
    for index in range(n_entries):
        type_guid, part_guid, first, last, _attrs, name = c_gpt_entry.unpack_from(array, index * entry_size)
        if type_guid == bytes(16) or last < first:
            continue
        type_uuid = UUID(bytes_le=type_guid)
        offset = first * ss
        if offset >= source.size:
            continue
        parts.append(Partition(
            number=index + 1, offset=offset, length=min((last - first + 1) * ss, source.size - offset),
            type=translate_partition_type(type_uuid), type_id=str(type_uuid),
            name=name.decode("utf-16-le", "replace").split("\x00", 1)[0],
            uuid=str(UUID(bytes_le=part_guid)),
        ))
    return PartitionTable("gpt", str(UUID(bytes_le=disk_guid)), ss, parts)
