"""Progress as events, and the controls of a running operation.

The CLI bar, ``--json`` summaries and the GUI consume the same ``ProgressEvent``s;
nothing below ``cli/`` and ``gui/`` prints.  An operation fills in what it knows:
bytes done, read and written, its pipeline (effective workers, depth, chunk size,
the bottleneck), what it skipped, unreadable sectors, pacing and whether it is
paused.  ``JobControl`` is how a caller pauses, resumes or cancels it from
another thread; ``StageClock`` is how an operation finds its bottleneck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import Interrupted

#: Pipeline stages an operation's main thread waits on, as named in events.
SOURCE, COMPRESSION, TARGET, RATE_LIMIT = "source", "compression", "target", "rate limit"


@dataclass
class ProgressEvent:
    operation: str  # "image", "resume-scan", "verify", "restore", ...
    done: int  # bytes of the logical source/image handled so far
    total: int
    output_bytes: int = 0  # compressed bytes written (image) or bytes written (restore)
    read_bytes: int = 0  # bytes actually read from the source
    started: float = field(default_factory=time.monotonic)
    message: str = ""
    chunk_size: int = 0
    workers: float = 0.0  # effective parallelism: worker threads busy on average, last seconds
    max_workers: int = 0
    depth: int = 0  # chunks in flight (read, not yet written)
    max_depth: int = 0
    bottleneck: str = ""  # SOURCE, COMPRESSION, TARGET, RATE_LIMIT, or "" before it is known
    paused: bool = False
    paused_seconds: float = 0.0  # time spent paused so far; rates leave it out
    start_done: int = 0  # ``done`` when this run started (a resumed image starts past 0)
    zero_bytes: int = 0  # all-zero chunks and sparse holes: stored as one tiny frame, no compression
    unallocated_bytes: int = 0  # not allocated by the filesystem (used-only): never read
    bad_bytes: int = 0  # unreadable source bytes, zero-filled (rescue)
    bad_sectors: int = 0
    rate_limit: int = 0  # bytes/s the source is held to right now (0: not limited)
    rate_limit_mode: str = ""  # "fixed" (--max-throughput), "adaptive" (--adaptive-rate-limit) or ""

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def active(self) -> float:
        """Seconds spent working (elapsed minus paused)."""
        return max(1e-9, self.elapsed - self.paused_seconds)

    @property
    def rate(self) -> float:
        """Bytes of ``done`` per working second in this run."""
        return (self.done - self.start_done) / self.active

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: every field, plus ``elapsed`` and ``rate``."""
        out = asdict(self)
        del out["started"]
        out["elapsed"] = round(self.elapsed, 3)
        out["rate"] = round(self.rate)
        out["workers"] = round(self.workers, 2)
        out["paused_seconds"] = round(self.paused_seconds, 3)
        return out


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    return None


class Throttled:
    """Forward at most one event per ``interval`` seconds (and always the last one via ``flush``).

    A change of operation, of the paused state or of the message goes through at once: a
    dashboard must show "paused" while the operation waits, not when it resumes.
    """

    def __init__(self, callback: ProgressCallback, interval: float = 0.2) -> None:
        self.callback = callback
        self.interval = interval
        self._last = 0.0
        self._pending: ProgressEvent | None = None
        self._state: tuple[str, bool, str] = ("", False, "")

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        state = (event.operation, event.paused, event.message)
        if now - self._last >= self.interval or state != self._state:
            self._last = now
            self._state = state
            self._pending = None
            self.callback(event)
        else:
            self._pending = event

    def flush(self) -> None:
        if self._pending is not None:
            self.callback(self._pending)
            self._pending = None


class JobControl:
    """Pause, resume or cancel a running operation from any thread.  Thread-safe.

    The operation calls ``checkpoint`` between units of work (a chunk) at a point where
    everything before it is complete on the target, so a pause never leaves a frame
    half-written and nothing is read while paused.  ``cancel`` wakes a paused
    operation, which then raises ``Interrupted`` from ``checkpoint``.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._cancelled = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()

    @property
    def pause_requested(self) -> bool:
        return not self._running.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def stop_requested(self) -> bool:
        """Either: the operation should reach its next checkpoint cleanly."""
        return not self._running.is_set() or self._cancelled.is_set()

    def checkpoint(self, ev: ProgressEvent, progress: ProgressCallback, cancelled_message: str) -> None:
        """Block while paused (reporting ``ev`` with ``paused`` set), raise ``Interrupted`` if cancelled.

        The paused time is added to ``ev.paused_seconds``.  Call it only when the work done so
        far is complete; it returns at once when neither pause nor cancel was asked for.
        """
        if self._running.is_set() and not self._cancelled.is_set():
            return
        if not self._running.is_set():
            since = time.monotonic()
            ev.paused = True
            progress(ev)
            self._running.wait()
            ev.paused_seconds += time.monotonic() - since
            ev.paused = False
            progress(ev)
        if self._cancelled.is_set():
            raise Interrupted(cancelled_message)


class StageClock:
    """Where an operation's time goes: its bottleneck and its effective parallelism.

    The operation's main thread reports how long it waited on each stage (reading the
    source, a worker's result, the target, the rate limit) and how long workers were
    busy; every ``window`` seconds ``fill`` turns that into ``ev.bottleneck`` (the stage
    waited on most) and ``ev.workers`` (worker-seconds per second).  One thread only.
    """

    def __init__(self, window: float = 1.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window = window
        self._clock = clock
        self._spent: dict[str, float] = {}
        self._busy = 0.0
        self._since = clock()

    def now(self) -> float:
        return self._clock()

    def add(self, stage: str, seconds: float) -> None:
        self._spent[stage] = self._spent.get(stage, 0.0) + seconds

    def add_busy(self, seconds: float) -> None:
        self._busy += seconds

    def restart(self) -> None:
        """Forget the current window (after a pause, which is no stage's fault)."""
        self._spent.clear()
        self._busy = 0.0
        self._since = self._clock()

    def fill(self, ev: ProgressEvent, *, final: bool = False) -> None:
        """Every ``window`` seconds; ``final``: now, from whatever the window holds (a short job's last event)."""
        now = self._clock()
        span = now - self._since
        if span < self.window and not (final and span > 0 and self._spent):
            return
        if self._spent:
            ev.bottleneck = max(self._spent.items(), key=lambda kv: kv[1])[0]
        ev.workers = self._busy / span
        self._spent.clear()
        self._busy = 0.0
        self._since = now
