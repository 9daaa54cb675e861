"""One vocabulary for byte ranges: ``Extent`` and ``AllocationMap``.

Allocation maps, an image's chunk map, NBD block status and sparse
restore/export all speak in extents.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import struct
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class ExtentKind(enum.Enum):
    DATA = "data"
    ZERO = "zero"  # stored, all zero bytes
    UNALLOCATED = "unallocated"  # never read (used-only imaging); reads back as zeros
    UNREADABLE = "unreadable"  # bad sectors; reads back as zeros


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int
    length: int
    kind: ExtentKind = ExtentKind.DATA

    @property
    def end(self) -> int:
        return self.offset + self.length


def coalesce(extents: Iterable[Extent]) -> list[Extent]:
    """Merge adjacent extents of the same kind; input must be sorted and non-overlapping."""
    out: list[Extent] = []
    for ext in extents:
        if ext.length <= 0:
            continue
        if out and out[-1].kind is ext.kind and out[-1].end == ext.offset:
            out[-1] = Extent(out[-1].offset, out[-1].length + ext.length, ext.kind)
        else:
            out.append(ext)
    return out


_PAIR = struct.Struct("<QQ")


class AllocationMap:
    """Sorted, coalesced, non-overlapping *used* byte ranges of a volume of ``size`` bytes.

    Stored as two ``array('Q')`` columns (start, end) so a map of millions of
    extents costs 16 bytes each, not one Python object each.  Immutable after
    construction; safe to share between threads.
    """

    __slots__ = ("_ends", "_starts", "cluster_size", "size")

    def __init__(self, ranges: Iterable[tuple[int, int]], size: int, cluster_size: int = 512) -> None:
        """Build from ``(offset, length)`` pairs in any order; overlaps and neighbours are merged
        and everything is clipped to ``[0, size)``."""
        self.size = size
        self.cluster_size = cluster_size
        self._starts = array("Q")
        self._ends = array("Q")
        pairs = sorted((o, o + n) for o, n in ranges if n > 0)
        for start, end in pairs:
            start, end = max(0, start), min(size, end)
            if start >= end:
                continue
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    @classmethod
    def full(cls, size: int) -> AllocationMap:
        return cls([(0, size)], size)

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[Extent]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield Extent(start, end - start, ExtentKind.DATA)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AllocationMap)
            and self.size == other.size
            and self._starts == other._starts
            and self._ends == other._ends
        )

    def __hash__(self) -> int:
        return hash((self.size, self._starts.tobytes(), self._ends.tobytes()))

    def __repr__(self) -> str:
        return f"AllocationMap(extents={len(self)}, used={self.used_bytes}, size={self.size})"

    @property
    def used_bytes(self) -> int:
        return sum(self._ends) - sum(self._starts)

    def used_in(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The used ``(offset, length)`` ranges inside ``[offset, offset + length)``, in order."""
        end = offset + length
        i = bisect.bisect_right(self._ends, offset)
        out: list[tuple[int, int]] = []
        n = len(self._starts)
        while i < n and self._starts[i] < end:
            s, e = max(self._starts[i], offset), min(self._ends[i], end)
            if s < e:
                out.append((s, e - s))
            i += 1
        return out

    def is_used(self, offset: int, length: int) -> bool:
        i = bisect.bisect_right(self._ends, offset)
        return i < len(self._starts) and self._starts[i] < offset + length

    def extents(self) -> list[Extent]:
        """Every byte of the volume as DATA (used) or UNALLOCATED extents."""
        out: list[Extent] = []
        pos = 0
        for ext in self:
            if ext.offset > pos:
                out.append(Extent(pos, ext.offset - pos, ExtentKind.UNALLOCATED))
            out.append(ext)
            pos = ext.end
        if pos < self.size:
            out.append(Extent(pos, self.size - pos, ExtentKind.UNALLOCATED))
        return out

    def encode(self) -> bytes:
        """Little-endian ``(start u64, end u64)`` pairs; the layout stored in the image header."""
        buf = bytearray(_PAIR.size * len(self))
        for i, (s, e) in enumerate(zip(self._starts, self._ends, strict=True)):
            _PAIR.pack_into(buf, i * _PAIR.size, s, e)
        return bytes(buf)

    @classmethod
    def decode(cls, data: bytes, size: int, cluster_size: int = 512) -> AllocationMap:
        if len(data) % _PAIR.size:
            raise ValueError(f"allocation map length {len(data)} is not a multiple of {_PAIR.size}")
        amap = cls((), size, cluster_size)
        prev_end = 0
        for s, e in _PAIR.iter_unpack(data):
            if not prev_end <= s < e <= size:  # sorted, non-empty, not overlapping; touching is allowed
                raise ValueError(f"allocation map extent [{s}, {e}) is unsorted or out of range")
            amap._starts.append(s)
            amap._ends.append(e)
            prev_end = e
        return amap

    def digest(self) -> str:
        """SHA-256 over the volume size and the encoded extents: identifies this allocation state."""
        h = hashlib.sha256(struct.pack("<Q", self.size))
        h.update(self.encode())
        return h.hexdigest()


def compose(size: int, pieces: Iterable[tuple[int, int, AllocationMap]], cluster_size: int = 512) -> AllocationMap:
    """The map of a whole disk: every byte counts as used except inside the ``(offset, length, map)``
    pieces (partitions whose filesystem is known), where only the piece's own used ranges, shifted by
    its offset, do.  Pieces must not overlap; each map's ``size`` is its piece's length."""
    out = AllocationMap((), size, cluster_size)
    starts, ends = out._starts, out._ends

    def add(start: int, end: int) -> None:
        start, end = max(0, start), min(size, end)
        if start >= end:
            return
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)

    pos = 0
    for offset, length, amap in sorted(pieces, key=lambda p: p[0]):
        if offset < pos:
            raise ValueError(f"allocation map pieces overlap at byte {offset}")
        add(pos, offset)
        for s, e in zip(amap._starts, amap._ends, strict=True):
            add(offset + s, offset + min(e, length))
        pos = offset + length
    add(pos, size)
    return out
