"""Btrfs data checksums: every sector of file data read for ``ls``/``extract``/``webdav`` is checked
against the checksum tree, as the kernel checks it, so a block that rotted on the disk is an error
and not silently different bytes.

The checksum tree (tree 7; Linux ``fs/btrfs/file-item.c``) holds items keyed ``(EXTENT_CSUM_OBJECTID,
EXTENT_CSUM, logical)``: an array of one checksum per sector, for the sectors from ``logical`` on.
They cover the bytes as stored: the compressed bytes of a compressed extent.  Files flagged
``NODATASUM`` (``nodatacow``, ``chattr +C`` on an empty file, ``-o nodatasum``), preallocated extents and
inline data have none and are not checked.  Any other sector read must have one: a sector without is
an error, as the kernel fails that read ("csum hole found", then EIO).  Checksum types: all four btrfs
has: CRC-32C (the default), xxhash64, SHA-256 and BLAKE2b.

Lookups descend the tree by key through ``btrfs.Reader`` (every block checked; the depth can only
fall), and the run of checksums, or the gap without any, around the last sector asked for is kept, so
reading a file in order costs one descent per checksum item.
"""

from __future__ import annotations

import bisect

from ..blocks import BlockSource
from ..errors import CorruptImageError, UnsupportedError
from . import c_btrfs as c
from .btrfs import DIGESTS, ChunkMap, Reader

CSUM_TREE = 7
EXTENT_CSUM_OBJECTID = (1 << 64) - 10
EXTENT_CSUM = 128
_NOWHERE = 1 << 64


class DataSums:
    """Checks file data read at device offsets against the checksum tree.  Not thread-safe."""

    def __init__(self, source: BlockSource, reader: Reader, chunks: ChunkMap, root: tuple[int, int]) -> None:
        self._source, self._reader = source, reader
        self._root, self._level = root
        self._sector = reader.sb.sectorsize
        self._size, self._digest = DIGESTS[reader.sb.csum_type]
        # device offset -> logical, through each chunk's first copy (the one file reads use); a DUP chunk's
        # second copy is read where the first fails its checksum, as the kernel does
        spans = sorted((ch.stripes[0], ch.logical, ch.length, ch.stripes[1:]) for ch in chunks.chunks)
        self._phys = [s[0] for s in spans]
        self._spans = spans
        self._run: tuple[int, int, bytes | None] = (0, 0, None)  # [start, end) logical, checksums or a gap

    @classmethod
    def open(cls, source: BlockSource, reader: Reader, chunks: ChunkMap,
             root: tuple[int, int] | None) -> DataSums | None:
        """``None`` when there is nothing to check against: no checksum tree, or an unknown checksum type."""
        if root is None or reader.sb.csum_type not in DIGESTS:
            return None
        return cls(source, reader, chunks, root)

    def check(self, what: str, physical: int, data: memoryview) -> None:
        """``data`` was read at device offset ``physical`` for a file that is not ``NODATASUM``: every sector
        it touches must have a checksum, and match it (a sector it covers only in part is read whole)."""
        sec = self._sector
        end = physical + len(data)
        pos = physical - physical % sec
        while pos < end:
            logical, room, copies = self._logical(pos, what)
            start, stop, sums = self._run_at(logical, what)
            n = min(end - pos, room, stop - logical)
            n += -n % sec
            if n <= 0:
                raise CorruptImageError(f"{what}: the checksum tree is out of order at logical {logical:#x}")
            if sums is None:
                raise CorruptImageError(
                    f"{what}: the sector at logical {logical:#x} (device offset {pos:#x}) has no data checksum, "
                    "and the file is not nodatasum: the checksum tree is damaged")
            first = (logical - start) // sec * self._size
            got = self._sums(self._sectors(pos, pos + n, physical, data))
            want = sums[first : first + len(got)]
            if got != want:
                self._repair(pos, n, physical, data, copies, got, want, logical, what)
            pos += n

    def _sums(self, sectors: bytes) -> bytes:
        """The checksums of whole ``sectors``, concatenated as the checksum tree stores them."""
        sec = self._sector
        return b"".join([self._digest(sectors[i : i + sec]) for i in range(0, len(sectors), sec)])

    def _repair(self, pos: int, n: int, physical: int, data: memoryview, copies: tuple[int, ...], got: bytes,
                want: bytes, logical: int, what: str) -> None:
        """Each sector of ``pos``…``pos + n`` whose checksum failed is taken from the chunk's other copy
        (``copies``: where this sector is in each) when that one matches, and put into ``data``."""
        sec, size = self._sector, self._size
        for k in range(n // sec):
            expected = want[k * size : (k + 1) * size]
            if got[k * size : (k + 1) * size] == expected:
                continue
            at = pos + k * sec
            good = next((block for block in (self._read_sector(c + at - pos) for c in copies)
                         if self._sums(block) == expected), None)
            if good is None:
                both = " in both copies" if copies else ""
                raise CorruptImageError(
                    f"{what}: the data checksum of the sector at logical {logical + k * sec:#x} (device offset "
                    f"{at:#x}) does not match{both}: the data is damaged")
            lo, hi = max(at, physical), min(at + sec, physical + len(data))
            if lo < hi:
                data[lo - physical : hi - physical] = good[lo - at : hi - at]

    def _sectors(self, lo: int, hi: int, physical: int, data: memoryview) -> bytes:
        """The whole sectors from device offset ``lo`` to ``hi``: from ``data`` where it holds them, the
        first and last read whole from the source where ``data`` starts or ends inside them."""
        sec, end = self._sector, physical + len(data)
        inner_lo = lo if lo >= physical else lo + sec
        inner_hi = hi if hi <= end else hi - sec
        parts = []
        if inner_lo > lo:
            parts.append(self._read_sector(lo))
        if inner_hi > inner_lo:
            parts.append(bytes(data[inner_lo - physical : inner_hi - physical]))
        if inner_hi < hi and inner_hi >= inner_lo:
            parts.append(self._read_sector(inner_hi))
        return b"".join(parts)

    def _read_sector(self, pos: int) -> bytes:
        whole = bytearray(self._sector)
        self._source.readinto_at(pos, memoryview(whole))
        return bytes(whole)

    def _logical(self, physical: int, what: str) -> tuple[int, int, tuple[int, ...]]:
        """The logical address of device offset ``physical``, the bytes left in its chunk from there, and
        where the chunk's other copies hold the same byte."""
        i = bisect.bisect_right(self._phys, physical) - 1
        if i >= 0:
            dev, logical, length, others = self._spans[i]
            if physical < dev + length:
                return logical + physical - dev, dev + length - physical, tuple(o + physical - dev for o in others)
        raise CorruptImageError(f"{what}: device offset {physical:#x} lies in no chunk")

    def _run_at(self, logical: int, what: str) -> tuple[int, int, bytes | None]:
        if not self._run[0] <= logical < self._run[1]:
            try:
                self._run = self._lookup(logical)
            except UnsupportedError as e:
                raise CorruptImageError(f"{what}: its data checksums cannot be read: "
                                        f"{str(e).split('; image it in full')[0]}") from None
        return self._run

    def _lookup(self, logical: int) -> tuple[int, int, bytes | None]:
        """The checksum item around ``logical``, or the gap from it to the next item."""
        want = (EXTENT_CSUM_OBJECTID, EXTENT_CSUM, logical)
        block_at, level, generation = self._root, self._level, None
        following = _NOWHERE  # the first checksum item after ``logical`` seen on the way down
        while True:
            block = self._reader.node(block_at, level, generation)
            count = c.HEADER.unpack_from(block)[7]
            shape = c.KEY_PTR if level else c.ITEM
            rows = [shape.unpack_from(block, c.HEADER.size + i * shape.size) for i in range(count)]
            i = bisect.bisect_right([r[:3] for r in rows], want) - 1
            if i + 1 < count and rows[i + 1][:2] == want[:2] and rows[i + 1][2] > logical:
                following = min(following, rows[i + 1][2])
            if i < 0:
                return logical, following, None
            if level:
                block_at, generation, level = rows[i][3], rows[i][4], level - 1
                continue
            objectid, typ, start, offset, size = rows[i]
            if (objectid, typ) != want[:2]:
                return logical, following, None
            first = c.HEADER.size + offset
            if first < c.HEADER.size + count * c.ITEM.size or first + size > len(block):
                raise UnsupportedError(f"the checksum leaf at logical {block_at:#x} has an item outside the block")
            n = size // self._size
            stop = start + n * self._sector
            if logical >= stop:
                return logical, following, None
            return start, stop, bytes(block[first : first + n * self._size])
