"""Fast parsing of plain NTFS MFT records for the file tree (``tree_ntfs.py``).

dissect.ntfs parses every attribute of a record into cstruct objects, about 0.5 ms a record in
CPython: most of the time of extracting a tree of small files.  ``MftRecords.get`` reads one record
with ``struct`` in about a tenth of that, keeping only what listing and extraction need: flags, link
count, the ``$STANDARD_INFORMATION`` times and file attributes, and each ``$DATA`` stream (resident bytes, or a
runlist with its sizes).

It declines (returns ``None``) whatever it does not fully understand — an ``$ATTRIBUTE_LIST``, a reparse
point, compressed or encrypted data, a record not in use or failing a check — and the caller then uses
dissect, so unusual records keep dissect's handling and its error messages.

Spec: libyal/libfsntfs "New Technologies File System (NTFS)" §4 (MFT entry, fix-ups), §5 (attributes),
§6 (data runs), as digested in ``shared/reference/ntfs-bitmap-and-extfs.md`` §1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..blocks import BlockSource
from ..errors import UnsupportedError
from .ntfs import (
    ATTR_DATA,
    ATTR_END,
    ATTR_HEADER,
    ATTR_NONRESIDENT,
    ATTR_RESIDENT,
    FILE_MFT,
    FILE_RECORD,
    FILE_RECORD_IN_USE,
    NtfsBoot,
    _apply_fixups,
    _Damaged,
    _decode_runlist,
    _read_record,
    _unnamed_data,
    _vcn_to_offset,
)

ATTR_STANDARD_INFORMATION = 0x10
ATTR_ATTRIBUTE_LIST = 0x20
ATTR_REPARSE_POINT = 0xC0
ATTR_EA = 0xE0  # extended attributes (FILE_FULL_EA_INFORMATION entries): WSL keeps POSIX fields there
RECORD_IS_DIRECTORY = 0x0002  # FILE_FILE_NAME_INDEX_PRESENT
ATTR_FLAG_COMPRESSED = 0x00FF
ATTR_FLAG_ENCRYPTED = 0x4000
NTFS_EPOCH_100NS = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units
SI_MIN = 48  # $STANDARD_INFORMATION up to its file attributes (4 times, attributes, max versions, ...)
_U64 = struct.Struct("<Q")
_END_MARKER = ATTR_END.to_bytes(4, "little")


@dataclass(frozen=True, slots=True)
class DataStream:
    """One ``$DATA`` attribute: ``resident`` bytes, or cluster ``runs`` ((lcn or None, count)) with sizes."""

    size: int
    resident: bytes | None
    runs: list[tuple[int | None, int]]
    initialized: int  # bytes past this read as zeros (valid data length)


@dataclass(frozen=True, slots=True)
class Record:
    number: int
    flags: int
    link_count: int
    mtime_ns: int | None
    streams: dict[str, DataStream]  # "" is the unnamed (main) stream
    atime_ns: int | None = None
    attributes: int = 0  # $STANDARD_INFORMATION file attributes (FILE_ATTRIBUTE_*)
    ea: bytes = b""  # the resident $EA value, if any

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & RECORD_IS_DIRECTORY)


def parse_record(rec: bytearray, number: int, offset: int) -> Record | None:
    """A plain record's contents, ``None`` when it needs the full parser; ``rec`` has its fix-ups applied."""
    _sig, _usa_ofs, _usa_n, _lsn, _seq, links, attr_ofs, flags, used, _alloc = FILE_RECORD.unpack_from(rec)
    if not flags & FILE_RECORD_IN_USE or used > len(rec) or attr_ofs >= used:
        return None
    mtime: int | None = None
    atime: int | None = None
    attributes = 0
    ea = b""
    streams: dict[str, DataStream] = {}
    pos = attr_ofs
    while pos + 4 <= used:
        if rec[pos : pos + 4] == _END_MARKER:
            break
        if pos + ATTR_HEADER.size > used:
            return None
        atype, alen, nonres, name_len, name_ofs, aflags = ATTR_HEADER.unpack_from(rec, pos)
        if alen < ATTR_HEADER.size or alen & 7 or pos + alen > used:
            return None
        if atype in (ATTR_ATTRIBUTE_LIST, ATTR_REPARSE_POINT):
            return None
        if atype == ATTR_STANDARD_INFORMATION and not nonres:
            vlen, vofs = ATTR_RESIDENT.unpack_from(rec, pos + 0x10)
            if vlen < SI_MIN or vofs + vlen > alen:
                return None
            mtime = (_U64.unpack_from(rec, pos + vofs + 8)[0] - NTFS_EPOCH_100NS) * 100
            atime = (_U64.unpack_from(rec, pos + vofs + 24)[0] - NTFS_EPOCH_100NS) * 100
            attributes = int.from_bytes(rec[pos + vofs + 32 : pos + vofs + 36], "little")
        elif atype == ATTR_EA:
            if nonres:
                return None
            vlen, vofs = ATTR_RESIDENT.unpack_from(rec, pos + 0x10)
            if vofs + vlen > alen:
                return None
            ea = bytes(rec[pos + vofs : pos + vofs + vlen])
        elif atype == ATTR_DATA:
            if aflags & (ATTR_FLAG_COMPRESSED | ATTR_FLAG_ENCRYPTED) or name_ofs + 2 * name_len > alen:
                return None
            try:
                name = bytes(rec[pos + name_ofs : pos + name_ofs + 2 * name_len]).decode("utf-16-le")
            except UnicodeDecodeError:
                return None
            if name in streams:
                return None
            stream = _data_stream(rec, pos, alen, nonres, offset)
            if stream is None:
                return None
            streams[name] = stream
        pos += alen
    else:
        return None  # ran off the record without the end marker
    return Record(number, flags, links, mtime, streams, atime, attributes, ea)


def _data_stream(rec: bytearray, pos: int, alen: int, nonres: int, offset: int) -> DataStream | None:
    if not nonres:
        vlen, vofs = ATTR_RESIDENT.unpack_from(rec, pos + 0x10)
        if vofs + vlen > alen:
            return None
        return DataStream(vlen, bytes(rec[pos + vofs : pos + vofs + vlen]), [], vlen)
    if alen < 0x10 + ATTR_NONRESIDENT.size:
        return None
    # A compression unit on an uncompressed attribute (sparse files have 4) only adds a field before the runlist.
    start_vcn, last_vcn, rl_ofs, _unit, allocated, size, initialized = ATTR_NONRESIDENT.unpack_from(rec, pos + 0x10)
    if start_vcn != 0 or rl_ofs >= alen or initialized > size or size > allocated:
        return None
    try:
        runs = _decode_runlist(bytes(rec[pos : pos + alen]), rl_ofs, offset + pos)
    except _Damaged:
        return None
    if sum(count for _lcn, count in runs) != last_vcn + 1 and size:
        return None
    return DataStream(size, None, runs, initialized)


class MftRecords:
    """Reads MFT records by number through ``$MFT``'s own runlist."""

    def __init__(self, source: BlockSource, boot: NtfsBoot) -> None:
        self.source = source
        self.boot = boot
        self.record_size = boot.record_size
        mft_off = boot.mft_lcn * boot.cluster_size
        try:
            self.mft = _unnamed_data(_read_record(source, boot, mft_off), mft_off)
        except _Damaged as e:
            raise UnsupportedError(f"ntfs: $MFT (record {FILE_MFT}) is unreadable: {e}") from None

    def offset(self, number: int) -> int | None:
        """Disk offset of record ``number`` when ``$MFT``'s first extent maps it contiguously, else ``None``
        (an unmapped record, or one split across runs, is left to dissect)."""
        cs = self.boot.cluster_size
        first, within = divmod(number * self.record_size, cs)
        last = (number * self.record_size + self.record_size - 1) // cs
        start = _vcn_to_offset(self.mft.runs, self.mft.start_vcn, first, cs)
        if start is None or _vcn_to_offset(self.mft.runs, self.mft.start_vcn, last, cs) != start + (last - first) * cs:
            return None
        return start + within

    def raw(self, number: int) -> tuple[bytearray, int] | None:
        """Record ``number`` with its fix-ups applied, and its disk offset; ``None`` when it is not mapped
        contiguously, lies past the source or fails its update sequence."""
        off = self.offset(number)
        if off is None or off + self.record_size > self.source.size:
            return None
        rec = bytearray(self.record_size)
        self.source.readinto_at(off, rec)
        try:
            _apply_fixups(rec, off)
        except _Damaged:
            return None
        return rec, off

    def get(self, number: int) -> Record | None:
        """Record ``number`` parsed, or ``None`` when it is unusual or fails a check."""
        found = self.raw(number)
        return None if found is None else parse_record(found[0], number, found[1])
