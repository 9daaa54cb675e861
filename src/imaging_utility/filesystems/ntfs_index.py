"""A name looked up in the NTFS root directory's ``$I30`` index, by our own parsing.

Used-only imaging checks the root's ``hiberfil.sys`` before trusting ``$Bitmap`` (``ntfs_state``).  Doing
that through dissect.ntfs costs its import (about 60 ms, more than the rest of the check); a root
directory is a few index blocks, so this reads them itself: the ``$INDEX_ROOT`` entries and every in-use
block of ``$INDEX_ALLOCATION`` (``$BITMAP`` says which), each block's update sequence checked.  What it
does not fully understand (an index split over several extension records, a non-resident index
bitmap, an index over ``ROOT_INDEX_MAX`` bytes, a damaged block in use, a file record that needs the full parser) raises
``Undecided``, and the caller asks dissect instead.

Structures (libyal/libfsntfs "NTFS" §7 indexes; Linux ``fs/ntfs/layout.h``): ``$INDEX_ROOT`` (0x90)
is the indexed type, collation rule, index block size, clusters per block, then an index node header
(entries offset, index length, allocated length, flags) whose offsets count from the header itself.  An
index block is ``INDX``, update sequence offset and count, LSN, VCN, then the same node header at 0x18.
An entry is the file reference (48-bit record number, 16-bit sequence), its length, key length and flags
(0x02: the last entry, no key); the key is a ``$FILE_NAME`` with the name's length at 0x40 and the
UTF-16 name at 0x42.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..blocks import BlockSource
from .ntfs import (
    ATTR_END,
    ATTR_HEADER,
    ATTR_NONRESIDENT,
    ATTR_RESIDENT,
    FILE_RECORD,
    FILE_RECORD_IN_USE,
    NtfsBoot,
    _apply_fixups,
    _Damaged,
    _decode_runlist,
)
from .ntfs_record import ATTR_ATTRIBUTE_LIST, MftRecords, parse_record

FILE_ROOT = 5
ATTR_INDEX_ROOT = 0x90
ATTR_INDEX_ALLOCATION = 0xA0
ATTR_BITMAP = 0xB0
I30 = "$I30".encode("utf-16-le")
ROOT_INDEX_MAX = 16 << 20  # a root directory of some 100,000 names; beyond that, dissect's B-tree descent
INDEX_ROOT_HEAD = struct.Struct("<IIIB3x")  # indexed type, collation, block size, clusters per block
NODE_HEADER = struct.Struct("<IIIB3x")  # entries offset, index length, allocated length, flags
ENTRY = struct.Struct("<QHHH2x")  # file reference, entry length, key length, flags
ENTRY_LAST = 0x02
LIST_ENTRY = struct.Struct("<IHBBQQH")  # type, entry length, name length, name offset, start VCN, reference, id
ATTR_LIST_MAX = 256 << 10
NAME_AT = 0x42  # the UTF-16 name inside a $FILE_NAME key; its length (characters) is the byte before the namespace
INDX_NODE_AT = 0x18
REF_RECORD = (1 << 48) - 1


class Undecided(Exception):
    """The index (or the file it names) is not of the plain kind this module reads; ask dissect."""


def first_bytes_in_root(source: BlockSource, boot: NtfsBoot, name: str, count: int) -> bytes | None:
    """The first ``count`` bytes of the root's file ``name`` (matched without case), ``None`` when there is
    no such file; bytes past its end or in a hole read as zeros."""
    records = MftRecords(source, boot)
    for number, sequence in _root_matches(records, name.lower()):
        rec, off = _record(records, number)
        if FILE_RECORD.unpack_from(rec)[4] != sequence or not FILE_RECORD.unpack_from(rec)[7] & FILE_RECORD_IN_USE:
            continue  # a stale entry: the record now belongs to another file, or to none
        parsed = parse_record(rec, number, off)
        stream = parsed.streams.get("") if parsed is not None else None
        if parsed is None or parsed.is_dir or stream is None:
            raise Undecided(f"record {number} needs the full parser")
        if stream.resident is not None:
            return stream.resident[:count].ljust(count, b"\0")
        lcn = stream.runs[0][0] if stream.runs else None
        if lcn is None or stream.initialized < count:
            return bytes(count)
        if lcn < 0 or (lcn + 1) * boot.cluster_size > source.size:
            raise Undecided(f"record {number}'s data starts outside the volume (cluster {lcn})")
        head = bytearray(count)
        source.readinto_at(lcn * boot.cluster_size, head)
        return bytes(head)
    return None


def _root_matches(records: MftRecords, lower: str) -> Iterator[tuple[int, int]]:
    """(record, sequence) of every root index entry whose name is ``lower`` without case."""
    for ref, entry_name in _root_entries(records):
        if entry_name.lower() == lower:
            yield ref & REF_RECORD, ref >> 48


def _root_entries(records: MftRecords) -> Iterator[tuple[int, str]]:
    source, boot = records.source, records.boot
    found = _root_index(records)
    root, alloc, bitmap = found.get(ATTR_INDEX_ROOT), found.get(ATTR_INDEX_ALLOCATION), found.get(ATTR_BITMAP)
    if not isinstance(root, bytes) or len(root) < INDEX_ROOT_HEAD.size + NODE_HEADER.size:
        raise Undecided("the root directory has no $INDEX_ROOT")
    block_size = INDEX_ROOT_HEAD.unpack_from(root)[2]
    yield from _node_entries(root, INDEX_ROOT_HEAD.size)
    if alloc is None:
        return
    if not isinstance(alloc, tuple) or isinstance(bitmap, tuple):
        raise Undecided("the root's $I30 index allocation is resident, or its bitmap is not")
    runs, size = alloc
    if size > ROOT_INDEX_MAX or block_size < 512 or block_size & (block_size - 1) or block_size > 64 << 10:
        raise Undecided(f"the root index has {size} bytes in blocks of {block_size}")
    for i in range(size // block_size):
        in_use = bitmap is None or (i // 8 < len(bitmap) and bitmap[i // 8] >> (i % 8) & 1)
        if not in_use:
            continue
        block, where = _stream_read(source, runs, boot.cluster_size, i * block_size, block_size)
        try:
            _apply_fixups(block, where, b"INDX")
        except _Damaged as e:
            raise Undecided(str(e)) from None
        yield from _node_entries(block, INDX_NODE_AT)


_Value = bytes | tuple[list[tuple[int | None, int]], int]  # resident bytes, or (runs, data size)


def _root_index(records: MftRecords) -> dict[int, _Value]:
    """The root's ``$I30`` index root, allocation and bitmap, following an ``$ATTRIBUTE_LIST`` (ntfs-3g
    moves ``$INDEX_ROOT`` into an extension record when the root grows) into the records it names."""
    found: dict[int, _Value] = {}
    listed = _collect(_record(records, FILE_ROOT)[0], found)
    if listed is None:
        return found
    if isinstance(listed, tuple):
        runs, size = listed
        if size > ATTR_LIST_MAX:
            raise Undecided(f"the root's attribute list holds {size} bytes")
        listed = bytes(_stream_read(records.source, runs, records.boot.cluster_size, 0, size)[0])
    for number, sequence in _listed_elsewhere(listed):
        ext = _record(records, number)[0]
        if FILE_RECORD.unpack_from(ext)[4] != sequence or _collect(ext, found) is not None:
            raise Undecided(f"the root's extension record {number} is stale or has its own attribute list")
    return found


def _record(records: MftRecords, number: int) -> tuple[bytearray, int]:
    found = records.raw(number)
    if found is None:
        raise Undecided(f"MFT record {number} is not mapped by $MFT's first extent, or fails its check")
    return found


def _listed_elsewhere(listed: bytes) -> Iterator[tuple[int, int]]:
    """(record, sequence) of each record other than the root's that an attribute list says holds part of
    its ``$I30`` index; each is named once."""
    seen = {FILE_ROOT}
    pos = 0
    while pos + LIST_ENTRY.size <= len(listed):
        atype, length, name_len, name_ofs, start_vcn, ref, _id = LIST_ENTRY.unpack_from(listed, pos)
        if atype == ATTR_END:
            return
        if length < LIST_ENTRY.size or pos + length > len(listed) or name_ofs + 2 * name_len > length:
            raise Undecided(f"the root's attribute list has an entry of length {length} at byte {pos}")
        named_i30 = listed[pos + name_ofs : pos + name_ofs + 2 * name_len] == I30
        if named_i30 and atype in (ATTR_INDEX_ROOT, ATTR_INDEX_ALLOCATION, ATTR_BITMAP):
            if start_vcn:
                raise Undecided("the root's index allocation is split over several records")
            if ref & REF_RECORD not in seen:
                seen.add(ref & REF_RECORD)
                yield ref & REF_RECORD, ref >> 48
        pos += length


def _collect(rec: bytearray, found: dict[int, _Value]) -> _Value | None:
    """Add a record's ``$I30`` index attributes to ``found``; returns its ``$ATTRIBUTE_LIST`` value, if any."""
    listed: _Value | None = None
    used = FILE_RECORD.unpack_from(rec)[8]
    pos = FILE_RECORD.unpack_from(rec)[6]
    while pos + ATTR_HEADER.size <= min(used, len(rec)):
        atype, alen, nonres, name_len, name_ofs, _flags = ATTR_HEADER.unpack_from(rec, pos)
        if atype == ATTR_END:
            break
        if alen < ATTR_HEADER.size or alen & 7 or pos + alen > len(rec) or name_ofs + 2 * name_len > alen:
            raise Undecided(f"the root record has attribute {atype:#x} of bad length {alen}")
        named_i30 = bytes(rec[pos + name_ofs : pos + name_ofs + 2 * name_len]) == I30
        if atype == ATTR_ATTRIBUTE_LIST or (named_i30 and atype in (ATTR_INDEX_ROOT, ATTR_INDEX_ALLOCATION,
                                                                     ATTR_BITMAP)):
            value = _value(rec, pos, alen, nonres)
            if atype == ATTR_ATTRIBUTE_LIST:
                listed = value
            elif atype in found:
                raise Undecided(f"the root has attribute {atype:#x} twice")
            else:
                found[atype] = value
        pos += alen
    return listed


def _value(rec: bytearray, pos: int, alen: int, nonres: int) -> _Value:
    if not nonres:
        vlen, vofs = ATTR_RESIDENT.unpack_from(rec, pos + 0x10)
        if vofs + vlen > alen:
            raise Undecided(f"the root's attribute at byte {pos} overflows its record")
        return bytes(rec[pos + vofs : pos + vofs + vlen])
    if alen < 0x10 + ATTR_NONRESIDENT.size:
        raise Undecided(f"the root's non-resident attribute at byte {pos} is truncated")
    start_vcn, _last, rl_ofs, _unit, _allocated, size, _init = ATTR_NONRESIDENT.unpack_from(rec, pos + 0x10)
    if start_vcn != 0:
        raise Undecided("the root's index allocation does not start at VCN 0")
    try:
        return _decode_runlist(bytes(rec[pos : pos + alen]), rl_ofs, pos), size
    except _Damaged as e:
        raise Undecided(str(e)) from None


def _node_entries(buf: bytes | bytearray, node_at: int) -> Iterator[tuple[int, str]]:
    if node_at + NODE_HEADER.size > len(buf):
        raise Undecided("an index node header lies past its block")
    entries_ofs, index_len, _alloc, _flags = NODE_HEADER.unpack_from(buf, node_at)
    pos, end = node_at + entries_ofs, min(node_at + index_len, len(buf))
    while True:
        if pos + ENTRY.size > end:
            raise Undecided(f"an index node ends without its last entry (at byte {pos})")
        ref, length, key_len, flags = ENTRY.unpack_from(buf, pos)
        if flags & ENTRY_LAST:
            return
        if length < ENTRY.size + NAME_AT or pos + length > end or not NAME_AT <= key_len <= length - ENTRY.size:
            raise Undecided(f"an index entry at byte {pos} has length {length}, key {key_len}")
        key = pos + ENTRY.size
        chars = buf[key + NAME_AT - 2]
        if NAME_AT + 2 * chars > key_len:
            raise Undecided(f"an index entry at byte {pos} has a name longer than its key")
        yield ref, bytes(buf[key + NAME_AT : key + NAME_AT + 2 * chars]).decode("utf-16-le", "replace")
        pos += length


def _stream_read(source: BlockSource, runs: list[tuple[int | None, int]], cluster: int, pos: int,
                 length: int) -> tuple[bytearray, int]:
    """``length`` bytes at ``pos`` of a non-resident stream, and the disk offset of the first."""
    out = bytearray(length)
    view = memoryview(out)
    vcn_start = done = 0
    first = -1
    for lcn, count in runs:
        run_lo, run_hi = vcn_start * cluster, (vcn_start + count) * cluster
        vcn_start += count
        lo, hi = max(run_lo, pos + done), min(run_hi, pos + length)
        if lo >= hi:
            continue
        if lcn is None or lcn < 0 or lo != pos + done:
            raise Undecided(f"the root index has a hole at byte {lo}")
        at = lcn * cluster + lo - run_lo
        if at + hi - lo > source.size:
            raise Undecided(f"the root index runs past the end of the volume (offset {at:#x})")
        source.readinto_at(at, view[done : done + hi - lo])
        first = at if first < 0 else first
        done += hi - lo
        if done == length:
            return out, first
    raise Undecided(f"the root index's runs end before byte {pos + length}")
