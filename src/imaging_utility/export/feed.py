"""The data a writer needs, read in parallel and handed over in order: ``Feed``.

A source is cut into 4 MiB units.  Units with no DATA extent (zero, unallocated or unreadable ranges
only) are never read and never handed over.  In the others the DATA extents are read (a unit with several
is read as one span, so an image's chunk is decoded once) and everything else in the buffer is zeroed,
on a pool of threads; each unit comes with its non-zero runs at the writer's granule (a cluster, a
grain, or the granule of holes in the output).  A writer that compresses
passes a ``transform``, run on the same threads right after the read.

Memory: ``depth`` units in flight (default ``2 × threads + 2``), each one 4 MiB buffer, reused.
Thread-safety: one consumer iterates a ``Feed``; the source must allow concurrent ``readinto_at``
(every ``BlockSource`` does).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import interrupts
from ..blocks import BlockSource
from ..extents import ExtentKind
from ..limits import threads_within

UNIT = 4 << 20
EXTENT_WINDOW = 1 << 30  # extents are asked for a window at a time: bounded memory on huge sources
_ZEROS = bytes(UNIT)


@dataclass(slots=True)
class Unit:
    """Source bytes ``[offset, offset + length)`` in ``buf`` (``UNIT`` bytes, zero past ``length``).

    ``runs`` are the non-zero ``(start, end)`` ranges relative to ``offset``, in granules: ``end`` may pass
    ``length`` by less than a granule (the padding of the last one).  ``extra`` is what the writer's
    transform made of the unit."""

    offset: int
    length: int
    buf: bytearray
    runs: list[tuple[int, int]] = field(default_factory=list)
    extra: object = None

    @property
    def view(self) -> memoryview:
        return memoryview(self.buf)


Transform = Callable[[Unit], None]
_Plan = tuple[int, int, list[tuple[int, int]]]  # unit offset, length, DATA ranges relative to the unit


@dataclass
class FeedStats:
    read_bytes: int = 0  # bytes read from the source
    nonzero_bytes: int = 0  # bytes in non-zero granules handed over
    unreadable: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), zero-filled


class Feed:
    def __init__(self, source: BlockSource, granule: int, *, threads: int | None = None,
                 transform: Transform | None = None, depth: int | None = None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        if granule <= 0 or UNIT % granule:
            raise ValueError(f"granule {granule} does not divide the unit of {UNIT} bytes")
        self.source = source
        self.granule = granule
        self.threads = threads_within(threads or os.cpu_count() or 2, UNIT)
        self.depth = depth or 2 * self.threads + 2
        self.transform = transform
        self.on_progress = on_progress
        self.stats = FeedStats()
        self._zero_granule = bytes(granule)

    # --- planning: which units hold data ------------------------------------------------------------
    def _plans(self) -> Iterator[_Plan]:
        size = self.source.size
        for window in range(0, size, EXTENT_WINDOW):
            wlen = min(EXTENT_WINDOW, size - window)
            cur: _Plan | None = None
            for ext in self.source.extents(window, wlen):
                if ext.kind is ExtentKind.UNREADABLE:
                    self.stats.unreadable.append((ext.offset, ext.length))
                if ext.kind is not ExtentKind.DATA:
                    continue
                pos = ext.offset
                while pos < ext.end:
                    base = pos - pos % UNIT
                    take = min(ext.end, base + UNIT) - pos
                    if cur is None or cur[0] != base:
                        if cur is not None:
                            yield cur
                        cur = (base, min(UNIT, size - base), [])
                    cur[2].append((pos - base, take))
                    pos += take
            if cur is not None:
                yield cur

    # --- the worker: read, find the non-zero granules, transform ------------------------------------
    def _fill(self, plan: _Plan, buf: bytearray) -> Unit:
        offset, length, ranges = plan
        view = memoryview(buf)
        g = self.granule
        unit = Unit(offset, length, buf)
        if len(ranges) > 1:
            # Scattered data (a used-only image): one read of the span, so each chunk of the image is
            # decoded once, straight into the buffer; what lies between the data ranges is then zeroed.
            first, last = ranges[0][0], ranges[-1][0] + ranges[-1][1]
            self.source.readinto_at(offset + first, view[first:last])
        pos = 0
        for rel, n in ranges:
            if rel > pos:
                view[pos:rel] = _ZEROS[: rel - pos]
            if len(ranges) == 1:
                self.source.readinto_at(offset + rel, view[rel : rel + n])
            pos = rel + n
        if pos < UNIT:
            view[pos:] = _ZEROS[: UNIT - pos]
        zero = self._zero_granule
        runs = unit.runs
        for rel, n in ranges:
            start = rel - rel % g
            for at in range(start, rel + n, g):
                if buf.startswith(zero, at):
                    continue
                if runs and runs[-1][1] == at:
                    runs[-1] = (runs[-1][0], at + g)
                elif not runs or runs[-1][1] < at:
                    runs.append((at, at + g))
        if self.transform is not None and runs:
            self.transform(unit)
        return unit

    def __iter__(self) -> Iterator[Unit]:
        free: list[bytearray] = []
        pending: deque[Future[Unit]] = deque()
        plans = self._plans()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="export")
        try:
            exhausted = False
            while True:
                interrupts.check()  # the caller defers signals (ops/export.py)
                while not exhausted and len(pending) < self.depth:
                    plan = next(plans, None)
                    if plan is None:
                        exhausted = True
                        break
                    self.stats.read_bytes += sum(n for _, n in plan[2])
                    pending.append(pool.submit(self._fill, plan, free.pop() if free else bytearray(UNIT)))
                if not pending:
                    break
                unit = pending.popleft().result()
                if unit.runs:
                    self.stats.nonzero_bytes += sum(min(e, unit.length) - s for s, e in unit.runs)
                    yield unit
                free.append(unit.buf)
                if self.on_progress is not None:
                    self.on_progress(unit.offset + unit.length)
            if self.on_progress is not None:
                self.on_progress(self.source.size)
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
