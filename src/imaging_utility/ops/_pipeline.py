"""The capture pipeline: read, compress and hash chunks in parallel, write frames in order.

DESIGN §4: this thread reads chunk *i* into a reused buffer and hands it to the
compression pool and to the single digest thread; finished frames are written
strictly in chunk order.  Memory is bounded by ``(2 × threads + 4) × chunk_size``.
All-zero chunks, and chunks the allocation map says are unused, become one
precomputed frame with no compression work; they hold no buffer, so up to ``ZERO_AHEAD`` of them
may wait behind a chunk being compressed while reading goes on (a run of free space then does not
drain the compression pool).  Where the main thread waits (source,
a compression result, the target, the rate limit) feeds the events' bottleneck.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..blocks import BlockSource
from ..devices.source import buffer_address
from ..errors import Interrupted
from ..extents import ExtentKind
from ..format.codec import Codec
from ..format.crc import crc32
from ..format.metaframe import Event, Trailer
from ..image.digests import Digests
from ..image.writer import ImageWriter
from ..progress import (
    COMPRESSION,
    RATE_LIMIT,
    SOURCE,
    TARGET,
    JobControl,
    ProgressCallback,
    ProgressEvent,
    StageClock,
)
from ..storage.local import STDOUT

if TYPE_CHECKING:
    from .capture import CaptureOptions, ChunkReader

Framed = tuple[bytes, int]  # a data frame and the CRC-32 of its bytes
Compressed = tuple[bytes, int, float]  # the same, and the seconds a worker spent on it


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Outcome:
    paths: list[str]
    zero_chunks: int
    read_bytes: int
    event: ProgressEvent
    bad_ranges: list[tuple[int, int]]

ZERO_AHEAD = 1024  # chunks without a buffer (zero frames) that may be pending beyond the buffers
ALIGN = 4096  # buffers start on a page: an O_DIRECT source reads into them with no bounce copy
Buffer = tuple[bytearray, int]  # a chunk buffer: its bytes begin at this offset of the bytearray


def _aligned_buffer(size: int) -> Buffer:
    raw = bytearray(size + ALIGN)
    return raw, -buffer_address(memoryview(raw)) % ALIGN


def run_chunks(source: BlockSource, dest: str, opts: CaptureOptions, codec: Codec, writer: ImageWriter,
         digests: Digests, first_chunk: int, bad: list[tuple[int, int]], progress: ProgressCallback,
         started: float, control: JobControl | None) -> Outcome:
    size, cs = source.size, opts.chunk_size
    n_chunks = -(-size // cs)
    amap = opts.allocation
    throttle = opts.throttle
    zero_bytes = bytes(cs)
    zeros = memoryview(zero_bytes)
    n_buffers = int(os.environ.get("IU_NBUF", 2 * opts.threads + 4))
    # made as the pipeline fills, never more than it needs: a source of a few chunks takes a few buffers,
    # and none is larger than the source
    free: deque[Buffer] = deque()
    made = 0
    buffer_size = max(1, min(cs, size))
    read_chunk = opts.chunk_reader or _plain_reader(source)
    done0 = min(size, first_chunk * cs)
    ev = ProgressEvent("image", done0, size, writer.bytes_written, started=started, chunk_size=cs,
                       max_workers=opts.threads, max_depth=n_buffers, start_done=done0,
                       rate_limit_mode=throttle.mode if throttle is not None else "")
    sector = max(1, source.sector_size)

    def note_bad(ranges: list[tuple[int, int]]) -> None:
        ev.bad_bytes += sum(n for _, n in ranges)
        ev.bad_sectors += sum(-(-(o + n) // sector) - o // sector for o, n in ranges)

    note_bad(bad)
    clock = StageClock()
    zero_chunks = 0
    read_bytes = 0
    zero_crcs: dict[int, int] = {}

    def zero_framed(length: int) -> Framed:
        frame = codec.zero_frame(length)
        crc = zero_crcs.get(length)
        if crc is None:
            crc = zero_crcs[length] = crc32(frame)
        return frame, crc

    observer = opts.observer
    nothing: Future[None] = Future()
    nothing.set_result(None)

    def feed(view: memoryview, offset: int) -> None:
        digests.update_chunk(view, offset, amap)
        if observer is not None:
            observer.update(view, offset)

    def compress(view: memoryview) -> Compressed:
        t0 = time.perf_counter()
        frame = codec.compress(view)
        crc = crc32(frame)
        return frame, crc, time.perf_counter() - t0
    # Each pending entry: ((frame, crc) or its future, digest future, buffer or None, length, bad ranges)
    pending: deque[tuple[Future[Compressed] | Framed, Future[None], Buffer | None, int, list[tuple[int, int]]]]
    pending = deque()

    def retire_one() -> None:
        frame_or_fut, hashed, buf, length, bad_here = pending.popleft()
        t0 = clock.now()
        if isinstance(frame_or_fut, tuple):
            frame, crc = frame_or_fut
        else:
            frame, crc, busy = frame_or_fut.result()
            clock.add_busy(busy)
        hashed.result()
        t1 = clock.now()
        writer.add_chunk(frame, length, crc)
        if bad_here:
            writer.add_event(Event(writer.chunks_written - 1, bad_here))
        clock.add(COMPRESSION, t1 - t0)
        wrote = clock.now() - t1
        clock.add(TARGET, wrote)
        if throttle is not None:
            throttle.waited(wrote)
        if buf is not None:
            free.append(buf)
        ev.done = min(size, ev.done + length)
        ev.output_bytes = writer.bytes_written
        ev.read_bytes = read_bytes
        ev.depth = made - len(free)
        if throttle is not None:
            ev.rate_limit = throttle.rate
        clock.fill(ev)
        progress(ev)

    def hold() -> None:
        """A pause or cancel: finish every chunk in flight, make the image durable, then wait."""
        while pending:
            retire_one()
        writer.sync()
        assert control is not None
        control.checkpoint(ev, progress, f"cancelled at {ev.done} of {size} bytes; {kept}")
        clock.restart()
        if throttle is not None:
            throttle.restart()

    kept = (f"the partial image {dest} is kept: resume with --resume (same source, DEST and options)"
            if dest != STDOUT else "an image streamed to standard output cannot be resumed: run it again")

    # A signal is taken between chunks (interrupts.py): never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(opts.threads, thread_name_prefix="compress") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="digest") as hasher:
        try:
            for i in range(first_chunk, n_chunks):
                interrupts.check()
                if control is not None and control.stop_requested:
                    hold()
                off = i * cs
                length = min(cs, size - off)
                used = [(off, length)] if amap is None else amap.used_in(off, length)
                if used and amap is None and _is_hole(source, off, length):
                    used = []  # a hole of a sparse file: zeros, without reading them
                    ev.zero_bytes += length
                elif amap is not None:
                    ev.unallocated_bytes += length - sum(n for _, n in used)
                if not used:
                    zero_chunks += 1
                    # unused space adds nothing to a used-only digest: no hand-off to the digest thread
                    pending.append((zero_framed(length),
                                    hasher.submit(feed, zeros[:length], off) if amap is None else nothing,
                                    None, length, []))
                else:
                    if not free and made < n_buffers:
                        free.append(_aligned_buffer(buffer_size))
                        made += 1
                    while not free:
                        retire_one()
                    buf = free.popleft()
                    raw, start = buf
                    view = memoryview(raw)[start : start + length]
                    want = sum(n for _, n in used)
                    if throttle is not None:
                        t0 = clock.now()
                        throttle.consume(want)
                        clock.add(RATE_LIMIT, clock.now() - t0)
                    t0 = clock.now()
                    bad_here = _fill(view, off, used, read_chunk, zeros)
                    took = clock.now() - t0
                    clock.add(SOURCE, took)
                    if throttle is not None:
                        throttle.observe(want, took)
                    read_bytes += want
                    if bad_here:
                        bad.extend(bad_here)
                        note_bad(bad_here)
                    if raw.startswith(zero_bytes if length == cs else zero_bytes[:length], start):
                        zero_chunks += 1
                        ev.zero_bytes += want
                        pending.append((zero_framed(length),
                                        hasher.submit(feed, view, off),
                                        buf, length, bad_here))
                    else:
                        pending.append((pool.submit(compress, view),
                                        hasher.submit(feed, view, off),
                                        buf, length, bad_here))
                while pending and (len(pending) > n_buffers + ZERO_AHEAD or _done(pending[0][0])):
                    retire_one()
            while pending:
                retire_one()
            interrupts.check()
            clock.fill(ev, final=not ev.bottleneck)
        except KeyboardInterrupt:
            _abandon(pending)
            writer.sync()
            raise Interrupted(f"interrupted at {ev.done} of {size} bytes; {kept}") from None
        except BaseException:
            _abandon(pending)
            raise
    trailer_meta = {
        "finished": utc_now(),
        "digests": digests.hexdigests(),
        "digest_covers": "allocated bytes in volume order" if amap is not None else "all image bytes",
        "stats": {"chunks": n_chunks, "zero_chunks_this_run": zero_chunks, "read_bytes_this_run": read_bytes},
        **(observer.trailer_meta() if observer is not None else {}),
    }
    paths = writer.finish(Trailer(size, n_chunks, trailer_meta, sorted(bad)))
    ev.output_bytes = writer.bytes_written
    ev.depth = 0
    progress(ev)
    return Outcome(paths, zero_chunks, read_bytes, ev, sorted(bad))


def _is_hole(source: BlockSource, offset: int, length: int) -> bool:
    return all(e.kind is ExtentKind.ZERO for e in source.extents(offset, length))


def _done(item: Future[Compressed] | Framed) -> bool:
    return isinstance(item, tuple) or item.done()


def _abandon(pending: deque[Any]) -> None:
    for frame_or_fut, hashed, *_ in pending:
        if isinstance(frame_or_fut, Future):
            frame_or_fut.cancel()
        hashed.cancel()
    pending.clear()


def _plain_reader(source: BlockSource) -> ChunkReader:
    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        source.readinto_at(offset, buf)
        return []

    return read


def _fill(view: memoryview, off: int, used: list[tuple[int, int]], read_chunk: ChunkReader,
          zeros: memoryview) -> list[tuple[int, int]]:
    """Read the used ranges of one chunk into ``view``; everything else becomes zeros."""
    length = len(view)
    if used == [(off, length)]:
        return read_chunk(off, view)
    view[:] = zeros[:length]
    bad: list[tuple[int, int]] = []
    for o, n in used:
        bad.extend(read_chunk(o, view[o - off : o - off + n]))
    return bad
