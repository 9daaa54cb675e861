"""Verify an image: every chunk (full) or a random sample (quick).

Full: every frame is decoded (its frame checksum against the seek table, its
content checksum, its size), the whole-image digests are recomputed and
compared with the trailer's, and the allocation map's digest is checked.
Quick: ``samples`` chunks chosen with a printed seed; says how likely a
corruption of a given share of chunks would have been caught.
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..errors import ChunkCorruptError, CorruptImageError
from ..format.metaframe import allocation_sha256
from ..limits import threads_within
from ..progress import JobControl, ProgressCallback, ProgressEvent, no_progress
from .digests import SUPPORTED, Digests

if TYPE_CHECKING:
    from .reader import ImageReader

MAX_REPORTED_FAILURES = 100


@dataclass
class VerifyReport:
    mode: str
    chunk_count: int
    chunks_checked: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    digests: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seed: int | None = None
    detection: str | None = None
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems and all(d["ok"] for d in self.digests.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "mode": self.mode, "chunk_count": self.chunk_count,
            "chunks_checked": self.chunks_checked, "failures": self.failures, "digests": self.digests,
            "problems": self.problems, "seed": self.seed, "detection": self.detection,
            "bad_ranges": [{"offset": o, "length": n} for o, n in self.bad_ranges],
        }


def detection_probability(chunks: int, samples: int, fraction: float) -> float:
    """P(at least one of ``samples`` distinct random chunks hits a corruption of ``fraction`` of ``chunks``)."""
    if chunks == 0:
        return 1.0
    bad = max(1, math.ceil(fraction * chunks))
    samples = min(samples, chunks)
    miss = 1.0
    for j in range(samples):
        if chunks - j <= 0:
            break
        miss *= max(0, chunks - bad - j) / (chunks - j)
    return 1.0 - miss


def samples_for(chunks: int, fraction: float = 0.01, target: float = 0.95) -> int:
    """The fewest random chunks that catch a corruption of ``fraction`` of ``chunks`` with probability ``target``
    (299 for a large image and the defaults; every chunk of a small one if that is what it takes)."""
    # drawing with replacement needs this many; drawing without replacement (as _quick does) never needs more
    bound = math.ceil(math.log(1 - target) / math.log(1 - fraction))
    lo, hi = 1, max(1, min(chunks, bound))
    if detection_probability(chunks, hi, fraction) < target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if detection_probability(chunks, mid, fraction) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _failure(e: ChunkCorruptError) -> dict[str, Any]:
    return {"chunk": e.chunk, "offset": e.offset, "error": str(e)}


def verify_image(reader: ImageReader, *, quick: bool = False, samples: int | None = None, seed: int | None = None,
                 threads: int | None = None, progress: ProgressCallback = no_progress,
                 extra_digests: tuple[str, ...] = (), control: JobControl | None = None) -> VerifyReport:
    """``extra_digests``: also compute these (full verify), e.g. SHA-256 of an image made without it.
    ``control`` pauses or cancels (``Interrupted``) between chunks."""
    threads = threads or os.cpu_count() or 2
    report = VerifyReport("quick" if quick else "full", reader.chunk_count, bad_ranges=list(reader.bad_ranges))
    _check_allocation(reader, report)
    if quick:
        _quick(reader, report, samples if samples is not None else samples_for(reader.chunk_count), seed, progress,
               control)
    else:
        _full(reader, report, threads, progress, extra_digests, control)
    return report


def _check_allocation(reader: ImageReader, report: VerifyReport) -> None:
    header = reader.header
    if header.allocation is None:
        return
    stored = header.meta["used_only"]["allocation_sha256"]
    if stored != allocation_sha256(header.source_size, header.allocation):
        report.problems.append("allocation map digest in the header does not match the stored map")


def _quick(reader: ImageReader, report: VerifyReport, samples: int, seed: int | None,
           progress: ProgressCallback, control: JobControl | None) -> None:
    report.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(report.seed)
    n = min(samples, reader.chunk_count)
    picks = sorted(rng.sample(range(reader.chunk_count), n))
    ev = ProgressEvent("verify", 0, n)
    for index in picks:
        if control is not None:
            control.checkpoint(ev, progress, "verify cancelled")
        try:
            reader.decode_chunk(index, check_frame=True)
        except ChunkCorruptError as e:
            report.failures.append(_failure(e))
        report.chunks_checked += 1
        ev.done = report.chunks_checked
        progress(ev)
    p = detection_probability(reader.chunk_count, n, 0.01)
    need = samples_for(reader.chunk_count)
    more = f" ({need} samples would give 95%)" if p < 0.95 else ""
    report.detection = (
        f"checked {n} of {reader.chunk_count} chunks (seed {report.seed}): a corruption touching ≥ 1% of "
        f"chunks would be caught with {p * 100:.1f}% probability{more}; run without --quick to check every chunk "
        "and the whole-image digests"
    )


def _full(reader: ImageReader, report: VerifyReport, threads: int, progress: ProgressCallback,
          extra: tuple[str, ...], control: JobControl | None) -> None:
    expected: dict[str, str] = dict(reader.trailer.meta.get("digests", {}))
    names = list(dict.fromkeys([n for n in expected if n in SUPPORTED] + [n for n in extra if n in SUPPORTED]))
    digests = Digests(names)
    threads = threads_within(threads, reader.chunk_size)
    window = 2 * threads + 2
    ev = ProgressEvent("verify", 0, reader.size, chunk_size=reader.chunk_size, max_workers=threads,
                       max_depth=window + 1)
    hashing = True
    # signals are taken between chunks (interrupts.py), never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
        pending: deque[tuple[int, Future[bytes]]] = deque()

        def take() -> None:
            nonlocal hashing
            index, fut = pending.popleft()
            try:
                data = fut.result()
                if hashing:
                    digests.update_chunk(data, index * reader.chunk_size, reader.allocation)
            except ChunkCorruptError as e:
                hashing = False
                if len(report.failures) < MAX_REPORTED_FAILURES:
                    report.failures.append(_failure(e))
            except CorruptImageError as e:
                hashing = False
                report.failures.append({"chunk": index, "offset": index * reader.chunk_size, "error": str(e)})
            report.chunks_checked += 1
            ev.done = min(reader.size, ev.done + reader.chunk_len(index))
            ev.depth = len(pending)
            progress(ev)

        for index in range(reader.chunk_count):
            interrupts.check()
            if control is not None and control.stop_requested:
                while pending:
                    take()
                control.checkpoint(ev, progress, f"verify cancelled at byte {ev.done} of {reader.size}")
            pending.append((index, pool.submit(reader.decode_chunk, index, check_frame=True)))
            if len(pending) > window:
                take()
        while pending:
            take()
    actual = digests.hexdigests() if hashing else {}
    for name in names:
        got = actual.get(name)
        want = expected.get(name)
        # a digest the image does not store is computed and reported, not compared
        report.digests[name] = {"expected": want, "actual": got, "ok": got is not None and want in (None, got)}
    for name, value in expected.items():
        if name not in SUPPORTED:  # a later version's digest: reported, not checked, not a failure
            report.digests[name] = {"expected": value, "actual": None, "ok": True, "unknown": True}


def corrupt_chunks(reader: ImageReader, offset: int, length: int, *, threads: int | None = None,
                   progress: ProgressCallback = no_progress) -> list[tuple[int, str]]:
    """(chunk index, error) of every chunk overlapping ``[offset, offset + length)`` that fails its checks
    (the whole frame is decoded and its frame CRC checked, as ``verify`` does)."""
    threads = threads_within(threads or os.cpu_count() or 2, reader.chunk_size)
    if length <= 0 or not reader.chunk_count:
        return []
    first, last = offset // reader.chunk_size, min(reader.chunk_count, -(-(offset + length) // reader.chunk_size))
    ev = ProgressEvent("check", 0, last - first)
    bad: list[tuple[int, str]] = []
    # signals are taken between chunks (interrupts.py), never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(threads, thread_name_prefix="check") as pool:
        pending: deque[tuple[int, Future[bytes]]] = deque()

        def take() -> None:
            index, fut = pending.popleft()
            try:
                fut.result()
            except CorruptImageError as e:
                bad.append((index, str(e)))
            ev.done += 1
            progress(ev)

        for index in range(first, last):
            interrupts.check()
            pending.append((index, pool.submit(reader.decode_chunk, index, check_frame=True)))
            if len(pending) > 2 * threads + 2:
                take()
        while pending:
            take()
    return bad
