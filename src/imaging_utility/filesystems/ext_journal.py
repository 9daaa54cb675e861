"""Replaying an ext3/4 journal (JBD2) in memory, so a volume that was not cleanly unmounted reads as
the kernel would read it after its recovery, without writing anything.

Spec: Linux ``Documentation/filesystems/ext4/journal.rst`` and ``fs/jbd2/recovery.c`` (the three
passes: scan for the end of the log, collect revokes, replay).  All journal fields are big-endian.

What is replayed: every complete transaction (its commit block found with the expected sequence) from
``s_start``, in order; a block revoked by a transaction at or after the one that logged it is left
out; an escaped block gets its magic back.  The result is a map "filesystem block -> where its newest
logged copy lies in the volume", read through ``Replayed`` (a ``BlockSource``).  Checksums of
descriptor and data blocks are not verified: the sequence numbers and commit blocks bound the log, as
they do for a journal without checksums.  Not replayed: an external journal, fast commits (both said
in the warning).  Bounded: the log is walked at most once around (``s_maxlen`` blocks); the map holds
at most one entry per journal block.

Thread-safe once built (``Replayed`` only reads).
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Callable

from ..blocks import BlockSource
from ..extents import Extent
from .ext import ExtSuper
from .ext_inode import ExtVolume

__all__ = ["Replayed", "replay"]

JBD2_MAGIC = 0xC03B3998
HEADER = struct.Struct(">III")  # h_magic, h_blocktype, h_sequence
SUPERBLOCK = struct.Struct(">IIIII")  # at 0x0C: s_blocksize, s_maxlen, s_first, s_sequence, s_start
SB_FEATURES = struct.Struct(">III")  # at 0x24: compat, incompat, ro_compat (superblock v2)
DESCRIPTOR, COMMIT, SB_V1, SB_V2, REVOKE = 1, 2, 3, 4, 5
INCOMPAT_REVOKE = 0x1
INCOMPAT_64BIT = 0x2
INCOMPAT_ASYNC_COMMIT = 0x4
INCOMPAT_CSUM_V2 = 0x8
INCOMPAT_CSUM_V3 = 0x10
INCOMPAT_FAST_COMMIT = 0x20
KNOWN_INCOMPAT = (INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3)
FLAG_ESCAPE = 0x1
FLAG_SAME_UUID = 0x2
FLAG_LAST_TAG = 0x8
TAIL_SIZE = 4  # descriptor and revoke block tail checksum with CSUM_V2/V3
MAX_ENTRIES = 1 << 22  # blocks replayed at most (4 M x 16 bytes): a journal is rarely over 1 GiB


class Replayed:
    """The volume as recovery would leave it: reads of a replayed block come from the journal."""

    def __init__(self, base: BlockSource, block_size: int, blocks: array[int], sources: array[int],
                 escaped: set[int]) -> None:
        self.base = base
        self.block_size = block_size
        self.blocks = blocks  # ascending filesystem block numbers
        self.sources = sources  # byte offset in the volume of each one's logged copy
        self.escaped = escaped

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def sector_size(self) -> int:
        return self.base.sector_size

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.base.extents(offset, length)

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        bs = self.block_size
        first, last = offset // bs, (offset + len(view) - 1) // bs
        i = bisect.bisect_left(self.blocks, first)
        if not len(view) or i >= len(self.blocks) or self.blocks[i] > last:
            self.base.readinto_at(offset, view)
            return
        pos = offset
        end = offset + len(view)
        while pos < end:
            block = pos // bs
            within = pos - block * bs
            n = min(bs - within, end - pos)
            j = bisect.bisect_left(self.blocks, block)
            part = view[pos - offset : pos - offset + n]
            if j < len(self.blocks) and self.blocks[j] == block:
                self.base.readinto_at(self.sources[j] + within, part)
                if block in self.escaped and within < 4:
                    magic = JBD2_MAGIC.to_bytes(4, "big")[within:]
                    part[: min(len(magic), n)] = magic[: min(len(magic), n)]
                pos += n
                continue
            # up to the next replayed block in one read
            nxt = self.blocks[j] * bs if j < len(self.blocks) else end
            n = min(end, nxt) - pos
            self.base.readinto_at(pos, view[pos - offset : pos - offset + n])
            pos += n


def replay(source: BlockSource, sb: ExtSuper, vol: ExtVolume) -> tuple[Replayed | None, str]:
    """The replayed volume and a summary of what was replayed, or ``None`` and why it was not."""
    if not sb.journal_inum:
        return None, "the journal is on another device"
    raw = vol.raw_inode(sb.journal_inum)
    runs = vol.runs(raw, sb.journal_inum)
    starts, phys = array("q"), array("q")  # logical journal block -> physical block, by runs
    logical = 0
    for start, count in runs:
        starts.append(logical)
        phys.append(-1 if start is None else start)
        logical += count
    bs = sb.block_size

    def where(n: int) -> int | None:
        k = bisect.bisect_right(starts, n) - 1
        if k < 0 or phys[k] < 0:
            return None
        return (phys[k] + n - starts[k]) * bs

    def read(n: int) -> bytes | None:
        at = where(n)
        if at is None or at + bs > source.size:
            return None
        buf = bytearray(bs)
        source.readinto_at(at, buf)
        return bytes(buf)

    head = read(0)
    if head is None:
        return None, "the journal's superblock is unreadable"
    magic, btype, _ = HEADER.unpack_from(head)
    if magic != JBD2_MAGIC or btype not in (SB_V1, SB_V2):
        return None, "the journal's superblock is damaged"
    blocksize, maxlen, first, sequence, start = SUPERBLOCK.unpack_from(head, 0x0C)
    incompat = SB_FEATURES.unpack_from(head, 0x24)[1] if btype == SB_V2 else 0
    if incompat & INCOMPAT_FAST_COMMIT:
        return None, "fast commits are not replayed"
    if incompat & ~KNOWN_INCOMPAT:
        return None, f"the journal uses unknown features {incompat & ~KNOWN_INCOMPAT:#x}"
    if blocksize != bs or not (0 < first < maxlen <= logical):
        return None, "the journal's superblock is inconsistent"
    if start == 0:
        return Replayed(source, bs, array("q"), array("q"), set()), "its log is empty"
    csum = bool(incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3))
    if incompat & INCOMPAT_CSUM_V3:
        tag_size = 16
    else:
        tag_size = 8 + (4 if incompat & INCOMPAT_64BIT else 0) + (2 if incompat & INCOMPAT_CSUM_V2 else 0)
    wide = bool(incompat & INCOMPAT_64BIT)
    log = _Log(read, first, maxlen, start)
    transactions = _scan(log, sequence, bs, tag_size, csum)
    if not transactions:
        return Replayed(source, bs, array("q"), array("q"), set()), "its log holds no complete transaction"
    # PASS_REVOKE, then PASS_REPLAY: a copy is left out when its block was revoked by its own transaction
    # or a later one; of the rest, the newest copy wins.
    revoked: dict[int, int] = {}
    for seq, _descriptors, revokes in transactions:
        for at in revokes:
            for block in _revoked(read(at) or b"", bs, wide, csum):
                revoked[block] = max(revoked.get(block, -1), seq)
    newest: dict[int, tuple[int, bool]] = {}
    for _seq, descriptors, _revokes in transactions:
        for block, at, escape, tseq in descriptors:
            if revoked.get(block, -1) < tseq:
                newest[block] = (at, escape)
        if len(newest) > MAX_ENTRIES:
            return None, f"its log holds more than {MAX_ENTRIES} blocks"
    blocks, sources, escaped = array("q"), array("q"), set()
    for block in sorted(newest):
        at, escape = newest[block]
        phys_at = where(at)
        if phys_at is None or block >= sb.blocks_count:
            continue
        blocks.append(block)
        sources.append(phys_at)
        if escape:
            escaped.add(block)
    summary = (f"{len(blocks)} block{'s' if len(blocks) != 1 else ''} of {len(transactions)} "
               f"transaction{'s' if len(transactions) != 1 else ''} replayed in memory")
    return Replayed(source, bs, blocks, sources, escaped), summary


class _Log:
    """Journal blocks from ``start``, wrapping from ``maxlen`` back to ``first``, at most once around."""

    def __init__(self, read: Callable[[int], bytes | None], first: int, maxlen: int, start: int) -> None:
        self.read, self.first, self.maxlen, self.pos = read, first, maxlen, start
        self.left = maxlen - first

    def next(self) -> int | None:
        if self.left <= 0:
            return None
        n = self.pos
        self.pos = self.pos + 1 if self.pos + 1 < self.maxlen else self.first
        self.left -= 1
        return n


Transaction = tuple[int, list[tuple[int, int, bool, int]], list[int]]  # seq, (block, at, escape, seq), revokes


def _scan(log: _Log, sequence: int, bs: int, tag_size: int, csum: bool) -> list[Transaction]:
    """The complete transactions in log order (PASS_SCAN of recovery.c)."""
    read = log.read
    out: list[Transaction] = []
    descriptors: list[tuple[int, int, bool, int]] = []
    revokes: list[int] = []
    seq = sequence
    while True:
        at = log.next()
        if at is None:
            break
        data = read(at)
        if data is None:
            break
        magic, btype, bseq = HEADER.unpack_from(data)
        if magic != JBD2_MAGIC or bseq != seq:
            break
        if btype == DESCRIPTOR:
            end = bs - (TAIL_SIZE if csum else 0)
            pos = HEADER.size
            while pos + tag_size <= end:
                blocknr, flags, high = _tag(data, pos, tag_size)
                target = log.next()
                if target is None:
                    return out
                descriptors.append((blocknr | high << 32, target, bool(flags & FLAG_ESCAPE), seq))
                pos += tag_size + (0 if flags & FLAG_SAME_UUID else 16)
                if flags & FLAG_LAST_TAG:
                    break
        elif btype == COMMIT:
            out.append((seq, descriptors, revokes))
            descriptors, revokes = [], []
            seq = (seq + 1) & 0xFFFFFFFF
        elif btype == REVOKE:
            revokes.append(at)
        else:
            break
    return out


def _tag(data: bytes, pos: int, tag_size: int) -> tuple[int, int, int]:
    if tag_size == 16:  # journal_block_tag3_t: blocknr, flags, blocknr_high, checksum
        blocknr, flags, high = struct.unpack_from(">III", data, pos)
        return blocknr, flags, high
    blocknr, _checksum, flags = struct.unpack_from(">IHH", data, pos)
    high = struct.unpack_from(">I", data, pos + 8)[0] if tag_size >= 12 else 0
    return blocknr, flags, high


def _revoked(data: bytes, bs: int, wide: bool, csum: bool) -> list[int]:
    if len(data) < HEADER.size + 4:
        return []
    count = struct.unpack_from(">I", data, HEADER.size)[0]  # bytes used, header included
    size = 8 if wide else 4
    limit = min(count, bs - (TAIL_SIZE if csum else 0))
    fmt = ">Q" if wide else ">I"
    return [struct.unpack_from(fmt, data, pos)[0] for pos in range(HEADER.size + 4, limit - size + 1, size)]
