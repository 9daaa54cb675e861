"""A job the GUI runs: an operation's plan, its controls, and the progress it reports.

An operation (``operations``) turns a form into a ``Plan``: a title, the equivalent
command line, and ``run(progress, control, warn)`` which calls the ops layer and
returns summary lines.  ``Job`` runs a plan on a worker thread; the engine's
progress events land in ``latest`` (a copy, at most a few times a second, so the
engine never waits for the screen) and in a ``RateHistory`` for the moving
average and the sparkline.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..progress import JobControl, ProgressCallback, ProgressEvent, Throttled

Warn = Callable[[str], None]
Runner = Callable[[ProgressCallback, JobControl, Warn], list[str]]


@dataclass
class Confirmation:
    """What the user must accept before a plan runs."""

    title: str
    lines: list[str]
    typed: str | None = None  # a word to type ("yes"), or None for a yes/no question
    accept: str = "Continue"


@dataclass
class Plan:
    title: str  # "image /dev/sdb → sdb.img.zst"
    command: str  # the equivalent command line
    run: Runner
    resume_command: str | None = None  # what continues the job after a cancel
    confirmation: Confirmation | None = None
    output_label: str = "written"  # what ``output_bytes`` is: "compressed" for an image
    confirmed: bool = False  # set once the user accepted ``confirmation``


class RateHistory:
    """Throughput over working time (pauses left out): a moving average and sparkline samples."""

    def __init__(self, window: float = 10.0, bucket: float = 2.0, keep: int = 150) -> None:
        self.window = window
        self.bucket = bucket
        self._points: deque[tuple[float, int]] = deque()  # (active seconds, done)
        self.buckets: deque[float] = deque(maxlen=keep)  # MiB/s per ``bucket`` seconds, the last ``keep``
        self._bucket_start: tuple[float, int] | None = None
        self.added = 0  # buckets ever added (``buckets`` keeps only the last ``keep``)

    def add(self, active: float, done: int) -> None:
        if self._points and active <= self._points[-1][0]:
            return
        self._points.append((active, done))
        while len(self._points) > 2 and active - self._points[1][0] >= self.window:
            self._points.popleft()
        if self._bucket_start is None:
            self._bucket_start = (active, done)
        elif active - self._bucket_start[0] >= self.bucket:
            t0, d0 = self._bucket_start
            self.buckets.append((done - d0) / (active - t0) / (1 << 20))
            self.added += 1
            self._bucket_start = (active, done)

    @property
    def average(self) -> float:
        """Bytes per second over the last ``window`` working seconds."""
        if len(self._points) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._points[0], self._points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class Job:
    plan: Plan
    control: JobControl = field(default_factory=JobControl)
    latest: ProgressEvent | None = None
    history: RateHistory = field(default_factory=RateHistory)
    state: str = "ready"  # ready, running, paused, done, failed, cancelled
    started: float = 0.0
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def progress_callback(self) -> Throttled:
        return Throttled(self._take, interval=0.25)

    def _take(self, ev: ProgressEvent) -> None:
        snapshot = dataclasses.replace(ev)
        with self._lock:
            if self.latest is not None and self.latest.operation != snapshot.operation:
                self.history = RateHistory()  # e.g. the resume scan is over: imaging starts
            self.latest = snapshot
            if not snapshot.paused:
                self.history.add(snapshot.active, snapshot.done)

    def snapshot(self) -> ProgressEvent | None:
        with self._lock:
            return self.latest

    def run(self, warn: Warn) -> list[str]:
        """Run the plan on this (worker) thread; returns its summary lines, raises what it raises."""
        self.state = "running"
        self.started = time.monotonic()
        callback = self.progress_callback()
        try:
            lines = self.plan.run(callback, self.control, warn)
        finally:
            callback.flush()
            self.finished = time.monotonic()
        return lines
