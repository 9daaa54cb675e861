"""``--adaptive-rate-limit``: read the source more slowly while other programs wait on I/O.

Imaging a busy production machine should not starve it.  Every ``INTERVAL`` the
limiter looks at two signals and adjusts a token bucket (``throttle.Throttle``):

* **I/O pressure** (``/proc/pressure/io``, Linux PSI): the share of wall time in
  which some task waited on I/O, minus the share our own reads took (an upper
  bound of our own waiting), is time *others* waited.  More than
  ``PRESSURE_LIMIT`` of it is congestion.
* **Read latency** of the source: from ``/proc/diskstats`` for a block device
  (milliseconds spent reading per byte read, over every reader of the device) or,
  for files and devices the kernel gives no statistics for, the time our own reads
  took per byte.  The quiet latency is the median of the intervals read at full
  speed without congestion over the last ``BASELINE_SECONDS`` (a median, not the
  minimum: a busy CPU alone moves single intervals by a factor of three or four).
  Congestion is two intervals in a row more than ``LATENCY_FACTOR`` times that.

Congested: the limit drops to ``DECREASE`` × the rate actually read (never below
``MIN_RATE``).  Clear: it rises by ``INCREASE``, and is lifted altogether once it no
longer holds the reads back (or settles at ``--max-throughput`` when both are given).
Where PSI is absent (older kernels, ``psi=0``) the latency signal works alone.

Not thread-safe: one thread (the imaging engine's reader) calls ``consume`` and ``observe``.
"""

from __future__ import annotations

import os
import stat
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .throttle import Throttle

PSI_IO = "/proc/pressure/io"
DISKSTATS = "/proc/diskstats"

INTERVAL = 0.5
PRESSURE_LIMIT = 0.10
LATENCY_FACTOR = 3.0
#: Latency excess (seconds per MiB) below which a rise is noise, not contention.
LATENCY_NOISE = 0.002
BASELINE_SECONDS = 60.0
DECREASE = 0.5
INCREASE = 1.5
MIN_RATE = 1 << 20
#: A limit this many times above the rate actually read holds nothing back: lift it.
LIFT_FACTOR = 2.0

MiB = 1 << 20


def read_pressure(path: str = PSI_IO) -> float | None:
    """Total microseconds some task stalled on I/O since boot (PSI ``some total=``), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("some "):
                    for field in line.split():
                        if field.startswith("total="):
                            return float(field[6:])
    except (OSError, ValueError):
        return None
    return None


def read_diskstats(name: str, path: str = DISKSTATS) -> tuple[int, int] | None:
    """``(sectors read, milliseconds spent reading)`` of block device ``name``, or None."""
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 7 and fields[2] == name:
                    return int(fields[5]), int(fields[6])
    except (OSError, ValueError):
        return None
    return None


def device_name(path: str) -> str | None:
    """Kernel name (``sdb``, ``loop3``) of a block device path, or None for anything else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    try:
        target = os.readlink(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    except OSError:
        return None
    return os.path.basename(target)


class AdaptiveThrottle:
    """A read-rate limit that follows I/O pressure and the source's latency (see the module doc).

    ``rate`` is the limit in force (0: none).  ``stats()`` sums it up for a summary.
    """

    mode = "adaptive"

    def __init__(self, ceiling: int | None = None, device: str | None = None, *,
                 pressure: Callable[[], float | None] | None = read_pressure,
                 diskstats: Callable[[str], tuple[int, int] | None] = read_diskstats,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ceiling = ceiling
        self.device = device
        self._pressure = pressure
        self._diskstats = diskstats
        self._clock = clock
        self._sleep = sleep
        self._bucket = Throttle(ceiling, clock=clock, sleep=sleep) if ceiling else None
        self._limit: float | None = None  # the adaptive limit, None while not congested
        self._history: deque[tuple[float, float]] = deque()  # (time, latency s/MiB) of quiet full-speed intervals
        self._since = clock()
        self._bytes = 0
        self._read_seconds = 0.0
        self._read_bytes = 0
        self._own_wait = 0.0
        self._slow_before = False
        self._psi = pressure() if pressure else None
        self._disk = diskstats(device) if device else None
        # One latency source for the whole run: mixing the device's with our own (page-cache
        # hits) would make a baseline from one and compare the other against it.
        self._use_disk = self._disk is not None
        self.limited_seconds = 0.0
        self.lowest = 0
        self.reductions = 0
        self.last_reason = ""

    @property
    def rate(self) -> int:
        """The limit in force, bytes/s, or 0 when reads are not held back."""
        if self._limit is None:
            return self.ceiling or 0
        return int(min(self._limit, self.ceiling or self._limit))

    def observe(self, nbytes: int, seconds: float) -> None:
        """One of our reads: ``nbytes`` in ``seconds``."""
        self._read_bytes += nbytes
        self._read_seconds += seconds

    def waited(self, seconds: float) -> None:
        """Our own thread waited this long on other I/O (writing the image): not others' pressure."""
        self._own_wait += seconds

    def consume(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be read; sleep as the current limit requires."""
        now = self._clock()
        if now - self._since >= INTERVAL:
            self._adjust(now)
        self._bytes += nbytes
        if self._bucket is not None:
            self._bucket.consume(nbytes)

    def _adjust(self, now: float) -> None:
        span = now - self._since
        measured = self._bytes / span
        pressure = self._others_waiting(span)
        latency = self._latency()
        while self._history and now - self._history[0][0] > BASELINE_SECONDS:
            self._history.popleft()  # a latency that stays high becomes the new quiet one after a while
        baseline = statistics.median(lat for _, lat in self._history) if len(self._history) >= 3 else None
        slow_now = (latency is not None and baseline is not None and latency > baseline * LATENCY_FACTOR
                    and latency - baseline > LATENCY_NOISE)
        # One slow interval can be a hiccup (a page fault storm, a flush): two in a row are contention.
        slow, self._slow_before = slow_now and self._slow_before, slow_now
        busy = pressure is not None and pressure > PRESSURE_LIMIT
        if latency is not None and self._limit is None and not (slow_now or busy):
            # The quiet latency is learnt only at full speed: throttled reads meet less of our own
            # queueing, and would make a baseline that full speed could never match again.
            self._history.append((now, latency))
        if self._limit is not None:
            self.limited_seconds += span
        if slow or busy:
            base = measured if self._limit is None else min(self._limit, max(measured, MIN_RATE))
            self._set(max(MIN_RATE, base * DECREASE))
            self.reductions += 1
            if busy and pressure is not None:
                self.last_reason = f"others waited on I/O {pressure * 100:.0f}% of the time"
            elif latency is not None and baseline is not None:
                self.last_reason = f"source latency {latency * 1000:.1f} ms/MiB, quiet {baseline * 1000:.1f} ms/MiB"
        elif self._limit is not None and not slow_now:
            raised = self._limit * INCREASE
            if (self.ceiling and raised >= self.ceiling) or raised > LIFT_FACTOR * max(measured, MIN_RATE):
                self._set(None)
            else:
                self._set(raised)
        self._reset(now)

    def restart(self) -> None:
        """Reads stopped for a while (a pause): start a fresh interval instead of judging that one."""
        self._psi = self._pressure() if self._pressure else None
        self._disk = self._diskstats(self.device) if self.device else None
        self._slow_before = False
        self._reset(self._clock())

    def _reset(self, now: float) -> None:
        self._since = now
        self._bytes = 0
        self._read_seconds = 0.0
        self._read_bytes = 0
        self._own_wait = 0.0

    def _set(self, limit: float | None) -> None:
        self._limit = limit
        rate = self.rate
        if rate and self._bucket is None:
            self._bucket = Throttle(rate, clock=self._clock, sleep=self._sleep)
        elif rate and self._bucket is not None:
            self._bucket.set_rate(rate)
        elif not rate:
            self._bucket = None
        if rate and (not self.lowest or rate < self.lowest):
            self.lowest = rate

    def _others_waiting(self, span: float) -> float | None:
        """Share of the last ``span`` seconds in which tasks other than our reader waited on I/O."""
        if self._pressure is None:
            return None
        total = self._pressure()
        before, self._psi = self._psi, total
        if total is None or before is None:
            return None
        return (total - before) / 1e6 / span - (self._read_seconds + self._own_wait) / span

    def _latency(self) -> float | None:
        """Seconds per MiB read in the last interval: the device's, else our own reads'."""
        if self._use_disk and self.device:
            now = self._diskstats(self.device)
            before, self._disk = self._disk, now
            if now is not None and before is not None and now[0] > before[0]:
                return (now[1] - before[1]) / 1000 / ((now[0] - before[0]) * 512 / MiB)
            return None
        if self._read_bytes:
            return self._read_seconds / (self._read_bytes / MiB)
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "rate": self.rate, "ceiling": self.ceiling,
            "limited_seconds": round(self.limited_seconds, 1), "lowest": self.lowest,
            "reductions": self.reductions, "last_reason": self.last_reason,
        }
