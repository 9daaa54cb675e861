"""Allocation bitmap → runs of set bits, fast and in bounded memory.

Bit order is LSB-first, as in the NTFS ``$Bitmap``, the ext block bitmaps and
the exFAT Allocation Bitmap: unit *i* is in use when
``bitmap[i >> 3] >> (i & 7) & 1`` (see ``shared/reference/ntfs-bitmap-and-extfs.md``).

A 1 TiB volume with 4 KiB clusters has a 32 MiB bitmap, so nothing here creates
one Python object per unit: long runs of ``0x00`` / ``0xFF`` bytes are found by
the C regex engine, and only the short mixed stretches between them are taken
apart, 64 bytes at a time, with big-integer bit tricks.  The bitmap is read from
the source in pieces of at most ``PIECE`` bytes, and runs are stored in two
``array('Q')`` columns, 16 bytes per run.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterable, Iterator

from ..blocks import BlockSource

PIECE = 1 << 20
"""Bytes of bitmap read and decoded at a time."""

_WINDOW = 64  # bytes of a mixed stretch turned into one int (512 bits: cheap big-int ops)
_UNIFORM = re.compile(rb"\x00{8,}|\xff{8,}")


def _mixed_runs(data: bytes, start: int, end: int, base: int) -> Iterator[tuple[int, int]]:
    """Runs of 1 bits in ``data[start:end]``, as bit ranges offset by ``base``; not coalesced
    across the 64-byte windows."""
    for pos in range(start, end, _WINDOW):
        stop = min(pos + _WINDOW, end)
        x = int.from_bytes(data[pos:stop], "little")
        offset = base + pos * 8
        while x:
            low = x & -x
            first = low.bit_length() - 1
            upper = x + low  # carries through the lowest run of ones, leaving one bit above it
            last = (upper & -upper).bit_length() - 1
            yield offset + first, offset + last
            x &= upper  # clears the lowest run of ones


def set_runs(data: bytes | bytearray | memoryview, base: int = 0, nbits: int | None = None) -> Iterator[
    tuple[int, int]
]:
    """Half-open ``(start, end)`` ranges of set bits in ``data`` (LSB-first), offset by ``base``.

    Only the first ``nbits`` bits count (default: all of ``data``); bits past them are padding.
    Ranges come in ascending order, coalesced.
    """
    total = len(data) * 8 if nbits is None else min(nbits, len(data) * 8)
    if total <= 0:
        return
    nbytes = (total + 7) // 8
    raw = bytes(data[:nbytes])
    if total % 8:
        raw = raw[:-1] + bytes([raw[-1] & ((1 << (total % 8)) - 1)])
    run_start = -1
    run_end = -1

    def runs() -> Iterator[tuple[int, int]]:
        pos = 0
        for m in _UNIFORM.finditer(raw):
            if m.start() > pos:
                yield from _mixed_runs(raw, pos, m.start(), base)
            if raw[m.start()] == 0xFF:
                yield base + m.start() * 8, base + m.end() * 8
            pos = m.end()
        if pos < len(raw):
            yield from _mixed_runs(raw, pos, len(raw), base)

    for s, e in runs():
        if s == run_end:
            run_end = e
            continue
        if run_end >= 0:
            yield run_start, run_end
        run_start, run_end = s, e
    if run_end >= 0:
        yield run_start, run_end


class RunList:
    """Ascending, coalesced half-open unit ranges, stored in two ``array('Q')`` columns.

    Not thread-safe.  ``add`` must be called in ascending order of ``start``
    (overlapping or touching ranges are merged).
    """

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts = array("Q")
        self.ends = array("Q")

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        if self.ends and start <= self.ends[-1]:
            if start < self.starts[-1]:
                raise ValueError(f"run [{start}, {end}) added out of order after [{self.starts[-1]}, ...)")
            self.ends[-1] = max(self.ends[-1], end)
            return
        self.starts.append(start)
        self.ends.append(end)

    def extend(self, runs: Iterable[tuple[int, int]]) -> None:
        for s, e in runs:
            self.add(s, e)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    @property
    def units(self) -> int:
        return sum(self.ends) - sum(self.starts)

    def byte_ranges(self, unit_size: int, offset: int = 0) -> Iterator[tuple[int, int]]:
        """``(byte offset, byte length)`` of each run of units of ``unit_size`` bytes at ``offset``."""
        for s, e in zip(self.starts, self.ends, strict=True):
            yield offset + s * unit_size, (e - s) * unit_size

    def contains(self, unit: int) -> bool:
        i = bisect.bisect_right(self.starts, unit) - 1
        return i >= 0 and unit < self.ends[i]

    def covers(self, start: int, end: int) -> bool:
        """Whether every unit of ``[start, end)`` is in a run (runs are coalesced: it is then in one)."""
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and end <= self.ends[i]


def read_bitmap(
    source: BlockSource,
    storage: Iterable[tuple[int, int]],
    nbits: int,
    out: RunList,
    base: int = 0,
) -> None:
    """Decode an on-disk bitmap of ``nbits`` bits into ``out`` (units offset by ``base``).

    ``storage`` lists the ``(byte offset, byte length)`` ranges of the source that hold the
    bitmap, in bitmap order (a fragmented ``$Bitmap``, a FAT chain).  Reads at most
    ``PIECE`` bytes at a time into one reused buffer.  Raises ``ValueError`` when the
    storage is shorter than ``nbits`` bits; read errors from the source propagate.
    """
    need = (nbits + 7) // 8
    buf = bytearray(PIECE)
    view = memoryview(buf)
    done = 0  # bitmap bytes consumed so far
    for off, length in storage:
        pos = 0
        while pos < length and done < need:
            n = min(PIECE, length - pos, need - done)
            source.readinto_at(off + pos, view[:n])
            out.extend(set_runs(view[:n], base + done * 8, nbits - done * 8))
            pos += n
            done += n
        if done >= need:
            return
    if done < need:
        raise ValueError(f"bitmap storage holds {done} bytes, {need} needed for {nbits} bits")
