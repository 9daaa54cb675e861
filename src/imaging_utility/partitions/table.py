"""MBR and GPT partition tables of a ``BlockSource``, numbered as Linux numbers them.

Specs: UEFI 2.10 §5.2 (legacy/protective MBR) and §5.3 (GPT header and entry array, CRC32 rules);
the MBR extended-partition chain as Linux walks it (``block/partitions/msdos.c``, ``parse_extended``):
primaries keep their slot number 1–4, logical partitions are numbered 5, 6, … in chain order, and the
extended container itself is not listed.  Structures: ``c_table.py``.

Why not ``dissect.volume.disk.Disk`` directly: in dissect.volume 3.18 GPT partition sizes are one
sector short (``last_lba`` is inclusive), logical MBR partitions are numbered by their EBR slot instead
of 5+, EBR chains have no loop guard, and GPT CRCs and the backup header are not checked.  Those are the
only parts this module needs, so it parses them thinly with ``struct`` and reuses dissect's partition type
names.

A source shorter than its table says (a truncated disk image) keeps what it has: a partition that starts
past the end is listed in ``missing``, one that ends past it is clipped and keeps its ``declared_length``,
and ``warnings`` names both, so nothing is dropped without a word.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass, field
from uuid import UUID

from ..blocks import BlockSource, WindowSource, read_at
from ..errors import NotFoundError
from .c_table import (
    GPT_HEADER_CRC_OFFSET,
    GPT_SIGNATURE,
    MBR_BOOT_SIGNATURE,
    MBR_DISK_SIGNATURE_OFFSET,
    MBR_EXTENDED_TYPES,
    MBR_SIZE,
    MBR_STATUS_ACTIVE,
    MBR_TABLE_OFFSET,
    MBR_TYPE_EMPTY,
    MBR_TYPE_GPT_PROTECTIVE,
    c_gpt_entry,
    c_gpt_header,
    c_mbr_entry,
)
from .mbr_sectors import mbr_sector_size

MAX_LOGICAL = 256  # Linux stops at its partition limit too; this also bounds a cyclic chain
GPT_MAX_ENTRY_ARRAY = 4 * 1024 * 1024  # far above the usual 16 KiB; bounds memory on garbage

_VBR_OEM_IDS = (b"NTFS", b"MSDOS", b"MSWIN", b"FAT", b"EXFAT", b"-FVE-FS-", b"SYSLINUX", b"mkfs.fat")


# the MBR type and the GPT types (LDM metadata, LDM data) of a Windows dynamic disk
LDM_TYPES = frozenset({"0x42", "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3", "af9b60a0-1431-4f62-bc68-3311714a69ad"})
DYNAMIC_WHY = ("a Windows dynamic disk (LDM) partition, but the LDM database that lays out its volumes was not "
               "found (a spanned or striped volume's filesystem at its start would map bytes of other volumes)")


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
    attributes: int = 0  # GPT attribute bits
    bootable: bool = False  # MBR status 0x80
    declared_length: int | None = None  # the table's length, when the source ends before the partition does

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def dynamic(self) -> bool:
        """A Windows dynamic disk (LDM) partition: the volumes in it are laid out by the LDM database."""
        return self.type_id.lower() in LDM_TYPES

    @property
    def table_length(self) -> int:
        """The length the table gives, whether or not the source holds all of it."""
        return self.length if self.declared_length is None else self.declared_length

    def describe(self) -> str:
        label = f" '{self.name}'" if self.name else ""
        return f"{self.number}: {self.length} bytes at {self.offset}, {self.type}{label}"


@dataclass(frozen=True, slots=True)
class GptInfo:
    """The GPT header fields a rewrite needs, from the copy that was used."""

    header_lba: int  # 1 for the primary, else the backup's LBA
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    entry_lba: int
    entry_count: int
    entry_size: int
    backup_ok: bool  # the other copy was found and valid too

    @property
    def primary_ok(self) -> bool:
        return self.header_lba == 1


@dataclass(frozen=True, slots=True)
class PartitionTable:
    scheme: str | None  # "mbr", "gpt" or None (no partition table)
    disk_id: str | None  # MBR disk signature as 0x%08x, or the GPT disk GUID
    sector_size: int
    partitions: list[Partition] = field(default_factory=list)
    missing: list[Partition] = field(default_factory=list)  # start at or past the source's end
    gpt: GptInfo | None = None
    ebrs: tuple[int, ...] = ()  # byte offsets of the EBR sectors of an MBR extended chain
    extended: tuple[int, int] | None = None  # (offset, length) of the MBR extended container
    warnings: tuple[str, ...] = ()
    extended_number: int | None = None  # its slot (1-4): Linux lists it as a tiny partition of that number

    def get(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        for part in self.missing:
            if part.number == number:
                raise NotFoundError(
                    f"partition {number} starts at byte {part.offset}, past the end of the source: "
                    "the image or disk is truncated")
        if not self.partitions:
            gone = f" ({len(self.missing)} lie past its end: truncated?)" if self.missing else ""
            raise NotFoundError(f"partition {number} not found: the source has no MBR or GPT partitions{gone}")
        listing = "; ".join(p.describe() for p in self.partitions)
        raise NotFoundError(f"partition {number} not found; available: {listing}")

    def problems(self, disk_size: int) -> list[str]:
        """What makes this table unsafe to image used-only or to rewrite: partitions cut by the disk's end
        or past it, overlapping partitions, GPT partitions outside the usable area."""
        out = [f"partition {p.number} starts at byte {p.offset}, beyond the disk's end ({disk_size})"
               for p in self.missing]
        out += [f"partition {p.number} ends at byte {p.offset + p.table_length}, beyond the disk's end "
                f"({disk_size})" for p in self.partitions if p.offset + p.table_length > disk_size]
        ordered = sorted(self.partitions, key=lambda p: p.offset)
        for a, b in itertools.pairwise(ordered):
            if b.offset < a.offset + a.table_length:
                out.append(f"partitions {a.number} and {b.number} overlap (bytes {b.offset}.."
                           f"{min(a.offset + a.table_length, b.offset + b.table_length)})")
        if self.gpt is not None:
            ss = self.sector_size
            lo, hi = self.gpt.first_usable_lba * ss, (self.gpt.last_usable_lba + 1) * ss
            out += [f"partition {p.number} lies outside the GPT's usable area (bytes {lo}..{hi})"
                    for p in self.partitions if p.offset < lo or p.offset + p.table_length > hi]
        return out


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
    return _Mbr(source, mbr_sector_size(source, entries)).table(entries, f"0x{disk_id:08x}")


def partition_source(source: BlockSource, number: int, table: PartitionTable | None = None) -> WindowSource:
    """A window over partition ``number`` (1-based, Linux numbering); ``NotFoundError`` lists the others."""
    part = (table or read_partitions(source)).get(number)
    return WindowSource(source, part.offset, part.length)


def _place(source: BlockSource, number: int, offset: int, length: int, **kw: object) -> tuple[Partition, bool]:
    """A partition clipped to the source; the flag is False when it starts at or past the source's end."""
    inside = offset < source.size
    cut = inside and offset + length > source.size
    part = Partition(number=number, offset=offset, length=min(length, source.size - offset) if inside else 0,
                     declared_length=length if cut or not inside else None, **kw)  # type: ignore[arg-type]
    return part, inside


def _truncation_warnings(parts: list[Partition], missing: list[Partition], size: int) -> list[str]:
    out = []
    if missing:
        numbers = ", ".join(str(p.number) for p in missing)
        out.append(f"the source ends at byte {size} but the table lists partition{'s' * (len(missing) > 1)} "
                   f"{numbers} past that point: they are missing (truncated image?)")
    for p in parts:
        if p.declared_length is not None:
            out.append(f"partition {p.number} is cut: the table gives {p.declared_length} bytes, the source "
                       f"holds {p.length} of them (truncated image?)")
    return out


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


class _Mbr:
    def __init__(self, source: BlockSource, ss: int) -> None:
        self.source, self.ss = source, ss
        self.parts: list[Partition] = []
        self.missing: list[Partition] = []
        self.ebrs: list[int] = []

    def table(self, entries: list[_Entry], disk_id: str) -> PartitionTable:
        extended: tuple[int, int] | None = None
        extended_number: int | None = None
        for slot, (status, _c1, ptype, _c2, lba, count) in enumerate(entries, start=1):
            if not count or ptype == MBR_TYPE_EMPTY:
                continue
            if ptype in MBR_EXTENDED_TYPES:
                if extended is None:
                    extended, extended_number = (lba, count), slot
                continue
            self._add(slot, lba * self.ss, count * self.ss, ptype, status)
        if extended is not None:
            self._logical(*extended)
        warnings = _truncation_warnings(self.parts, self.missing, self.source.size)
        container = None if extended is None else (extended[0] * self.ss, extended[1] * self.ss)
        return PartitionTable("mbr", disk_id, self.ss, self.parts, self.missing, None, tuple(self.ebrs),
                              container, tuple(warnings), extended_number)

    def _add(self, number: int, offset: int, length: int, ptype: int, status: int) -> None:
        part, inside = _place(self.source, number, offset, length, type=_type_name(ptype),
                              type_id=f"0x{ptype:02x}", bootable=status == MBR_STATUS_ACTIVE)
        (self.parts if inside else self.missing).append(part)

    def _logical(self, ext_lba: int, ext_count: int) -> None:
        """Walk the EBR chain: data entries are relative to their EBR, links to the extended start."""
        ss = self.ss
        number = 5
        ebr_lba, ebr_count = ext_lba, ext_count
        seen: set[int] = set()
        while ebr_lba not in seen and len(seen) < MAX_LOGICAL and ebr_lba * ss + MBR_SIZE <= self.source.size:
            seen.add(ebr_lba)
            entries = _mbr_entries(read_at(self.source, ebr_lba * ss, MBR_SIZE))
            if entries is None:
                return
            self.ebrs.append(ebr_lba * ss)
            for i, (status, _c1, ptype, _c2, lba, count) in enumerate(entries):
                if not count or ptype in MBR_EXTENDED_TYPES:
                    continue
                # Linux's sanity checks for the 3rd and 4th entries, which often hold garbage
                if i >= 2 and (lba + count > ebr_count or ebr_lba + lba + count > ext_lba + ext_count):
                    continue
                self._add(number, (ebr_lba + lba) * ss, count * ss, ptype, status)
                number += 1
            link = next((e for e in entries if e[5] and e[2] in MBR_EXTENDED_TYPES), None)
            if link is None:
                return
            ebr_lba, ebr_count = ext_lba + link[4], link[5]


# --- GPT ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Header:
    lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: bytes
    entry_lba: int
    n_entries: int
    entry_size: int
    array: bytes


def _read_gpt(source: BlockSource, ss: int) -> PartitionTable | None:
    """The primary GPT, else the backup at the last LBA (with a warning); None when neither is valid."""
    last_lba = source.size // ss - 1
    primary = _gpt_header(source, 1, ss)
    if primary is not None:
        other = _gpt_header(source, primary.alternate_lba, ss) if primary.alternate_lba != 1 else None
        return _gpt_table(source, ss, primary, other is not None, [])
    backup = _gpt_header(source, last_lba, ss) if last_lba > 1 else None
    if backup is None:
        return None
    warning = (f"the primary GPT (LBA 1) is damaged; using the backup GPT at LBA {last_lba} "
               "(a restore writes both copies again)")
    return _gpt_table(source, ss, backup, False, [warning])


def _gpt_header(source: BlockSource, lba: int, ss: int) -> _Header | None:
    if lba < 1 or (lba + 1) * ss > source.size or ss < c_gpt_header.size:
        return None
    raw = bytearray(read_at(source, lba * ss, ss))
    (signature, _revision, header_size, header_crc, _reserved, my_lba, alt_lba, first_usable,
     last_usable, disk_guid, entry_lba, n_entries, entry_size, entries_crc) = c_gpt_header.unpack_from(raw)
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
    return _Header(lba, alt_lba, first_usable, last_usable, disk_guid, entry_lba, n_entries, entry_size, array)


def _gpt_table(source: BlockSource, ss: int, h: _Header, other_ok: bool, warnings: list[str]) -> PartitionTable:
    parts: list[Partition] = []
    missing: list[Partition] = []
    for index in range(h.n_entries):
        type_guid, part_guid, first, last, attrs, name = c_gpt_entry.unpack_from(h.array, index * h.entry_size)
        if type_guid == bytes(16) or last < first:
            continue
        type_uuid = UUID(bytes_le=type_guid)
        part, inside = _place(
            source, index + 1, first * ss, (last - first + 1) * ss,
            type=_type_name(type_uuid), type_id=str(type_uuid),
            name=name.decode("utf-16-le", "replace").split("\x00", 1)[0],
            uuid=str(UUID(bytes_le=part_guid)), attributes=attrs,
        )
        (parts if inside else missing).append(part)
    warnings += _truncation_warnings(parts, missing, source.size)
    if h.lba == 1 and not other_ok:
        warnings.append(f"the backup GPT (LBA {h.alternate_lba}) is missing or damaged; the primary is used "
                        "(a restore writes both copies again)")
    info = GptInfo(h.lba, h.alternate_lba, h.first_usable, h.last_usable, h.entry_lba, h.n_entries,
                   h.entry_size, other_ok)
    return PartitionTable("gpt", str(UUID(bytes_le=h.disk_guid)), ss, parts, missing, info, (), None,
                          tuple(warnings))


def gpt_entry_array(source: BlockSource, table: PartitionTable) -> bytes:
    """The raw entry array of the GPT copy ``table`` was read from (for rewriting it elsewhere)."""
    if table.gpt is None:
        raise ValueError("not a GPT table")
    g = table.gpt
    return read_at(source, g.entry_lba * table.sector_size, g.entry_count * g.entry_size)


def _type_name(ptype: int | UUID) -> str:
    """dissect's readable name of an MBR type id or GPT type GUID.  Imported on first use: the import
    loads every partition scheme dissect knows (about 40 ms), which commands on a volume never need."""
    from dissect.volume.disk.partition import translate_partition_type

    return str(translate_partition_type(ptype))
