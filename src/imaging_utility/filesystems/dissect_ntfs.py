"""dissect.ntfs with the attribute values it reads whole bounded: import ``NTFS`` from here.

dissect.ntfs parses four attribute types by reading their whole value (``AttributeRecord.from_fh`` →
``fh.read()``): ``$STANDARD_INFORMATION``, ``$ATTRIBUTE_LIST``, ``$FILE_NAME`` and ``$REPARSE_POINT``.
A record that claims one of them non-resident with a size of gigabytes (sparse runs cost nothing on the
disk) made it allocate that much: a 4 MiB volume found by the fuzzer took 9.9 GB and 20 s to open.  On a
sound volume the first and third are resident and small, an attribute list holds at most 256 KiB (the
format's limit) and a reparse point 16 KiB.  So each parser is wrapped: a value over
``ATTRIBUTE_VALUE_MAX`` raises ``OversizedAttribute`` (a ``CorruptImageError``: the file, or the volume
when it is a system record, is reported damaged in one line) before a byte is read.  Importing this
module installs the bound once; it changes only those four entries of dissect's ``ATTRIBUTE_CLASS_MAP``.

Two index walks are replaced, each raising ``BrokenIndexError`` (which the callers take as damage):
- ``Index.search`` descends from node to node by the VCNs the entries name, without end: a node naming
  itself or an ancestor hung used-only imaging in the hibernation lookup (a fuzzed volume).  Here a
  search visits each index buffer once.
- ``index._iter_entries`` took an entry of Length 0 for the end of the node, so a damaged entry cut a
  directory listing short without a word.  Here an entry shorter than an entry's header or not 8-byte
  aligned is damage.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from dissect.ntfs import NTFS
from dissect.ntfs import attr as _attr
from dissect.ntfs import index as _index
from dissect.ntfs.exceptions import BrokenIndexError

from ..errors import CorruptImageError

__all__ = ["ATTRIBUTE_VALUE_MAX", "NTFS", "OversizedAttribute"]

ATTRIBUTE_VALUE_MAX = 256 << 10  # $ATTRIBUTE_LIST's limit, the largest value of the four


class OversizedAttribute(CorruptImageError):
    """An attribute that dissect reads whole claims more than such an attribute can hold."""


def _bounded(parse: Callable[..., Any], what: str) -> Callable[..., Any]:
    def bounded(fh: BinaryIO, record: Any = None) -> Any:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        if size > ATTRIBUTE_VALUE_MAX:
            segment = getattr(record, "segment", None)
            where = "an MFT record" if segment is None else f"MFT record {segment}"
            raise OversizedAttribute(f"the ${what} of {where} claims {size} bytes (at most {ATTRIBUTE_VALUE_MAX})")
        return parse(fh, record)

    bounded._iu_bounded = True  # type: ignore[attr-defined]
    return bounded


for _type, _parse in list(_attr.ATTRIBUTE_CLASS_MAP.items()):
    if not getattr(_parse, "_iu_bounded", False):
        _attr.ATTRIBUTE_CLASS_MAP[_type] = _bounded(_parse, _type.name)


INDEX_ENTRY_MIN = 16  # _INDEX_ENTRY's header: file reference, Length, KeyLength, Flags


def _iter_entries(index: Any, fh: BinaryIO, offset: int, size: int) -> Iterator[Any]:
    """``dissect.ntfs.index._iter_entries``, with every step checked to move forward."""
    max_offset = offset + size
    while offset < max_offset:
        try:
            entry = _index.IndexEntry(index, fh, offset)
        except EOFError:
            break
        if entry.length < INDEX_ENTRY_MIN or entry.length % 8:
            raise BrokenIndexError(f"index entry at byte {offset:#x} of its node has length {entry.length}")
        yield entry
        if entry.is_end:
            break
        offset += entry.length


def _search(self: Any, value: Any, exact: bool = True, cmp: Callable[..., Any] | None = None) -> Any:
    """``dissect.ntfs.index.Index.search``, visiting each index buffer at most once."""
    cmp = cmp or {_index.COLLATION.FILE_NAME: _index._cmp_filename,
                  _index.COLLATION.NTOFS_ULONG: _index._cmp_ulong}.get(self.root.collation_rule)
    if not cmp:  # a name index ($I30) always collates by FILE_NAME: another rule there is damage
        raise BrokenIndexError(f"index collation rule {self.root.collation_rule} is not one an index of names "
                               "or numbers has")
    search_value = value.upper() if cmp == _index._cmp_filename else value
    entries = list(self.root.entries())
    seen: set[int] = set()
    while True:
        entry = _index._bsearch(entries, search_value, cmp)
        if not entry.is_node or (not entry.is_end and cmp(entry, search_value) == _index.Match.Equal):
            break
        vcn = entry.node_vcn
        if vcn in seen:
            raise BrokenIndexError(f"index node VCN {vcn} is reached twice in one search (a loop)")
        seen.add(vcn)
        entries = list(self.index_buffer(vcn).entries())
    if exact and (entry.is_end or cmp(entry, search_value) != _index.Match.Equal):
        raise KeyError(f"Value not found: {value}")
    return entry


_index._iter_entries = _iter_entries
_index.Index.search = _search
