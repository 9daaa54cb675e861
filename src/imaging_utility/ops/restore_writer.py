"""Write the stored bytes of a window of an image to a target, skipping free space.

"Stored" means the allocation map's used ranges (all of the window when the image is not used-only):
free space is never written unless asked (``free="discard"`` sends ``BLKDISCARD``, ``free="zero"``
makes it read back as zeros).  Stored all-zero chunks become ``BLKZEROOUT`` on a device (no bytes sent)
and holes in a file.  Chunks are decoded on a thread pool and written in order with ``pwrite``; each one
is checked as it is decoded, and a corrupt one stops the restore (exit 8) or, with
``continue_on_error``, is zero-filled and reported.  The same writes in the same places every time, so a
restore killed half-way and run again ends the same.  On a device, what is written goes to the disk as
the restore goes (``WriteBehind``) and then leaves the page cache: gigabytes restored once would otherwise
push the machine's working set out of memory and leave everything to the final fsync.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import interrupts
from .._io import drop_cached, pwrite_all, start_writeback
from ..devices.blockdev import discard, zero_out
from ..devices.throttle import Throttle
from ..errors import ChunkCorruptError, NoSpaceError, PermissionDeniedError, TargetIOError
from ..image.reader import ImageReader
from ..limits import threads_within
from ..progress import (
    COMPRESSION,
    RATE_LIMIT,
    TARGET,
    JobControl,
    ProgressCallback,
    ProgressEvent,
    StageClock,
    no_progress,
)

FREE_SKIP, FREE_DISCARD, FREE_ZERO = "skip", "discard", "zero"
ZERO_BLOCK = bytes(1 << 20)
WRITE_BEHIND = 64 << 20


class WriteBehind:
    """Every ``WRITE_BEHIND`` bytes written to a device: start the writeback of the span written since the
    last time (``start_writeback``, no waiting) and drop the span before it, on the disk by then, from the
    page cache.  Writes within one restore go forward, so a span is one range."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lo = self._hi = self._pending = 0
        self._started: tuple[int, int] | None = None  # the span whose writeback started last time

    def wrote(self, offset: int, n: int) -> None:
        if self._pending:
            self._lo, self._hi = min(self._lo, offset), max(self._hi, offset + n)
        else:
            self._lo, self._hi = offset, offset + n
        self._pending += n
        if self._pending >= WRITE_BEHIND:
            if self._started is not None:
                drop_cached(self.fd, *self._started)
            start_writeback(self.fd, self._lo, self._hi - self._lo)
            self._started, self._pending = (self._lo, self._hi - self._lo), 0


@dataclass
class CorruptChunk:
    chunk: int
    offset: int  # image (source) byte offset of the chunk
    length: int
    error: str


@dataclass
class WriteReport:
    bytes_written: int = 0  # data bytes sent to the target
    bytes_zeroed: int = 0  # stored zeros (BLKZEROOUT, zero writes, or holes in a file)
    bytes_free: int = 0  # free space (not written unless discarded or zeroed)
    corrupt: list[CorruptChunk] = field(default_factory=list)


def write_error(e: OSError, target: str, offset: int) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpaceError(f"no space left on {target} at byte {offset}: {e.strerror}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"cannot write {target}: {e.strerror}")
    return TargetIOError(f"write error on {target} at byte {offset}: {e.strerror}")


class TargetWriter:
    """pwrite / zero / discard on an fd, coalescing zero and discard runs into few ioctls."""

    def __init__(self, fd: int, name: str, device: bool, throttle: Throttle | None,
                 clock: StageClock | None = None) -> None:
        self.fd, self.name, self.device, self.throttle = fd, name, device, throttle
        self.clock = clock or StageClock()
        self._runs: dict[str, list[int]] = {}
        self._behind = WriteBehind(fd) if device else None

    def write(self, data: memoryview, offset: int) -> None:
        clock = self.clock
        if self.throttle is not None:
            t0 = clock.now()
            self.throttle.consume(len(data))
            clock.add(RATE_LIMIT, clock.now() - t0)
        t0 = clock.now()
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as e:
            raise write_error(e, self.name, offset) from None
        if self._behind is not None:
            self._behind.wrote(offset, len(data))
        clock.add(TARGET, clock.now() - t0)

    def span(self, kind: str, offset: int, length: int) -> None:
        """Queue a zero (``"zero"``) or discard (``"discard"``) range; adjacent ones merge."""
        run = self._runs.get(kind)
        if run is not None and run[1] == offset:
            run[1] += length
            return
        self.flush(kind)
        self._runs[kind] = [offset, offset + length]

    def flush(self, kind: str | None = None) -> None:
        for k in [kind] if kind else list(self._runs):
            run = self._runs.pop(k, None)
            if run is None:
                continue
            start, end = run
            try:
                if k == FREE_DISCARD:
                    discard(self.fd, start, end - start)
                elif not self.device or not zero_out(self.fd, start, end - start):
                    self._write_zeros(start, end)
            except OSError as e:
                raise write_error(e, self.name, start) from None

    def _write_zeros(self, start: int, end: int) -> None:
        if not self.device:
            return  # a file target is new or truncated: its holes already read as zeros
        pos = start
        while pos < end:
            n = min(len(ZERO_BLOCK), end - pos)
            self.write(memoryview(ZERO_BLOCK)[:n], pos)
            pos += n


def write_stored(reader: ImageReader, fd: int, target: str, *, start: int, length: int, dest_offset: int = 0,
                 device: bool, free: str = FREE_SKIP, continue_on_error: bool = False, threads: int = 2,
                 throttle: Throttle | None = None, progress: ProgressCallback = no_progress,
                 operation: str = "restore", control: JobControl | None = None) -> WriteReport:
    """Write image bytes ``[start, start+length)`` to ``fd`` at ``dest_offset`` onward (see the module doc).

    ``control`` pauses between chunks (every chunk before it written) or cancels (``Interrupted``; the
    target is then incomplete)."""
    clock = StageClock()
    out = TargetWriter(fd, target, device, throttle, clock)
    report = WriteReport()
    amap = reader.allocation
    cs = reader.chunk_size
    end = start + length
    shift = dest_offset - start
    threads = threads_within(threads, cs)
    window = 2 * threads + 2
    ev = ProgressEvent(operation, 0, length, chunk_size=cs, max_workers=threads, max_depth=window + 1)
    # (chunk, ranges to write, decoding future or None for a stored zero chunk, window bytes)
    pending: deque[tuple[int, list[tuple[int, int]], Future[bytes] | None, int]] = deque()

    def retire() -> None:
        index, ranges, fut, span = pending.popleft()
        if fut is not None:
            t0 = clock.now()
            try:
                data = memoryview(fut.result())
            except ChunkCorruptError as e:
                if not continue_on_error:
                    raise
                report.corrupt.append(CorruptChunk(index, index * cs, reader.chunk_len(index), str(e)))
                for o, n in ranges:
                    out.span(FREE_ZERO, o + shift, n)
                    report.bytes_zeroed += n
            else:
                clock.add(COMPRESSION, clock.now() - t0)
                base = index * cs
                for o, n in ranges:
                    out.write(data[o - base : o - base + n], o + shift)
                    report.bytes_written += n
        ev.done += span
        ev.output_bytes = report.bytes_written
        ev.depth = len(pending)
        clock.fill(ev)
        progress(ev)

    first, last = start // cs, (end - 1) // cs if length else -1
    # signals are taken between chunks (interrupts.py), never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(threads, thread_name_prefix="restore") as pool:
        try:
            for index in range(first, last + 1):
                interrupts.check()
                if control is not None and control.stop_requested:
                    while pending:
                        retire()
                    out.flush()
                    control.checkpoint(ev, progress, f"{operation} cancelled at byte {ev.done} of {length}; "
                                       f"{target} is incomplete")
                    clock.restart()
                c0 = max(start, index * cs)
                c1 = min(end, index * cs + reader.chunk_len(index))
                ranges = [(c0, c1 - c0)] if amap is None else amap.used_in(c0, c1 - c0)
                _free(out, report, free, c0, c1, ranges, shift)
                fut: Future[bytes] | None = None
                if ranges and reader.zero_chunk_checked(index):  # compared byte for byte (spec §2.1)
                    for o, n in ranges:
                        out.span(FREE_ZERO, o + shift, n)
                        report.bytes_zeroed += n
                elif ranges:
                    fut = pool.submit(reader.decode_chunk, index)
                pending.append((index, ranges, fut, c1 - c0))
                while pending and (len(pending) > window or pending[0][2] is None):
                    retire()
            while pending:
                retire()
        except BaseException:
            for item in pending:
                if item[2] is not None:
                    item[2].cancel()
            raise
    out.flush()
    return report


def _free(out: TargetWriter, report: WriteReport, free: str, c0: int, c1: int, ranges: list[tuple[int, int]],
          shift: int) -> None:
    """Account for (and discard or zero, if asked) the free space of one chunk's window ``[c0, c1)``."""
    pos = c0
    for o, n in [*ranges, (c1, 0)]:
        if o > pos:
            report.bytes_free += o - pos
            if free != FREE_SKIP:
                out.span(free, pos + shift, o - pos)
        pos = o + n


def ensure_size(fd: int, target: str, size: int) -> None:
    """Give a file target its full size (trailing free space and zeros were left as holes)."""
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        raise write_error(e, target, size) from None
