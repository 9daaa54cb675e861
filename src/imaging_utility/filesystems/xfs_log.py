"""Is an XFS internal log clean?  The last log record must be an unmount record.

Spec: Linux ``fs/xfs/xfs_log_recover.c`` (``xlog_find_head``, ``xlog_find_cycle_start``,
``xlog_find_tail``, ``xlog_check_unmount_rec``) and ``xfs_log_format.h``.  The log is a ring of
512-byte basic blocks; each block's first word is the cycle number of the pass that wrote it (a
record header block keeps its magic there and the cycle in the next word).  The head is where the
cycle number drops.  A cleanly unmounted filesystem's last record before the head holds exactly
one operation, flagged ``XLOG_UNMOUNT_TRANS``, and ends right at the head.

If the log is not clean, the free-space B+trees on disk may be older than the log: blocks the log
allocates would be missed.  Such a filesystem must be mounted (or ``xfs_repair``-ed) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..blocks import BlockSource, read_at
from . import c_xfs as c

if TYPE_CHECKING:
    from .xfs import XfsSuper

_SCAN = 1 << 20  # bytes read at a time by the linear scans
_NOT_CLEAN = "its log is not clean (mounted, or not cleanly unmounted: mount and unmount it, or run xfs_repair)"


class _Log:
    def __init__(self, source: BlockSource, sb: XfsSuper) -> None:
        self.source = source
        self.start = sb.fsb_offset(sb.logstart)
        self.nbb = sb.logblocks * sb.blocksize // c.BBSIZE

    def block(self, blk: int, length: int = c.BBSIZE) -> bytes:
        return read_at(self.source, self.start + (blk % self.nbb) * c.BBSIZE, length)

    @staticmethod
    def cycle_of(data: bytes | memoryview, pos: int = 0) -> int:
        first = int.from_bytes(data[pos : pos + 4], "big")
        if first == c.LOG_HEADER_MAGIC:
            return int.from_bytes(data[pos + 4 : pos + 8], "big")
        return first

    def cycle(self, blk: int) -> int:
        return self.cycle_of(self.block(blk, 8))

    def first_other(self, cycle: int) -> int | None:
        """The first block whose cycle is not ``cycle``, by a linear scan; ``None`` if there is none."""
        per = _SCAN // c.BBSIZE
        for first in range(0, self.nbb, per):
            n = min(per, self.nbb - first)
            data = read_at(self.source, self.start + first * c.BBSIZE, n * c.BBSIZE)
            for i in range(n):
                if self.cycle_of(data, i * c.BBSIZE) != cycle:
                    return first + i
        return None

    def head(self) -> int:
        c0, last = self.cycle(0), self.cycle(self.nbb - 1)
        if c0 == last:
            found = self.first_other(c0)  # a rare layout: scan rather than guess
            return 0 if found is None else found
        lo, hi = 0, self.nbb - 1  # cycle(lo) == c0, cycle(hi) == last: find the first block of ``last``
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cycle(mid) == last:
                hi = mid
            else:
                lo = mid
        return hi

    def last_record(self, head: int) -> int | None:
        """The block of the last record header before ``head`` (searching back over the whole ring)."""
        per = _SCAN // c.BBSIZE
        searched = 0
        end = head  # exclusive, may be 0 (wrap)
        while searched < self.nbb:
            n = min(per, self.nbb - searched, end if end > 0 else self.nbb)
            first = (end - n) % self.nbb
            data = read_at(self.source, self.start + first * c.BBSIZE, n * c.BBSIZE)
            for i in range(n - 1, -1, -1):
                if int.from_bytes(data[i * c.BBSIZE : i * c.BBSIZE + 4], "big") == c.LOG_HEADER_MAGIC:
                    return first + i
            searched += n
            end = first
        return None


def log_state(source: BlockSource, sb: XfsSuper) -> str | None:
    """``None`` when the internal log is clean, else why it is not (for an error message)."""
    log = _Log(source, sb)
    if log.nbb < 2 or log.start + log.nbb * c.BBSIZE > source.size:
        return f"its log ({log.nbb} blocks at offset {log.start:#x}) lies outside the source"
    if log.cycle(0) == 0:
        return None  # a zeroed log: nothing was ever logged, nothing to replay
    head = log.head()
    rec = log.last_record(head)
    if rec is None:
        return f"its log at offset {log.start:#x} holds no record header (damaged)"
    hdr = log.block(rec)
    _, _, version, length, _, _, _, _, num_logops = c.LOG_REC_HEADER.unpack_from(hdr)
    size = int.from_bytes(hdr[c.LOG_REC_SIZE_OFFSET : c.LOG_REC_SIZE_OFFSET + 4], "big")
    if length < 0 or length > 1 << 24 or num_logops < 0:
        return f"its log record at offset {log.start + rec * c.BBSIZE:#x} is damaged (length {length})"
    hblks = -(-size // c.LOG_CYCLE_SIZE) if version & c.LOG_VERSION_2 and size > c.LOG_CYCLE_SIZE else 1
    data = log.block(rec + hblks)
    unmount = num_logops == 1 and data[c.LOG_OP_FLAGS_OFFSET] & c.LOG_UNMOUNT_TRANS
    ends_at_head = (rec + hblks + -(-length // c.BBSIZE)) % log.nbb == head % log.nbb
    if unmount and ends_at_head:
        return None
    return _NOT_CLEAN
