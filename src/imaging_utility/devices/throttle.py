"""``--max-throughput``: a token-bucket rate limiter and the parser for its argument.

Rates are **binary**: ``K`` = 1024, ``M`` = 1024², ``G`` = 1024³, ``T`` = 1024⁴ bytes
per second.  ``100M``, ``100m``, ``100MB``, ``100MiB`` and ``100MiB/s`` all mean
100 × 1024² bytes/s (unlike ``dd``, where ``MB`` is decimal: one rule is easier
to remember than two).  Fractions are allowed (``1.5G``); a bare number is bytes/s.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import UsageError

#: The bucket holds at most this many seconds' worth of bytes, so after an idle
#: spell a burst can run ahead of the rate by no more than this.
BURST_SECONDS = 0.25

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?(?:/s)?\s*", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """``"100M"`` → ``104857600`` bytes/s.  Raises ``UsageError`` on anything else.

    Accepted: a number (integer or decimal), an optional unit ``K``/``M``/``G``/``T``
    (any case, each 1024-based), optionally followed by ``B`` or ``iB``, optionally
    by ``/s``.
    """
    m = _RATE.fullmatch(text)
    if m is None or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise UsageError(
            f"invalid rate {text!r}: expected a number with an optional K/M/G/T suffix "
            "(1024-based), e.g. 100M"
        )
    rate = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if rate < 1:
        raise UsageError(f"invalid rate {text!r}: must be at least 1 byte per second")
    return rate


class Throttle:
    """Holds the long-run average of ``consume`` calls to ``rate_bytes_per_sec``.

    A token bucket that starts empty and holds at most ``BURST_SECONDS`` of
    tokens.  A caller that takes more than is there goes into debt and sleeps until
    the debt is paid, outside the lock, so concurrent callers queue up behind each
    other's debt and together get the rate.  Thread-safe.  ``set_rate`` changes the rate
    of a running bucket (the adaptive limiter does).
    """

    mode = "fixed"

    def __init__(
        self,
        rate_bytes_per_sec: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_bytes_per_sec <= 0:
            raise UsageError(f"throughput limit must be positive, not {rate_bytes_per_sec}")
        self.rate = rate_bytes_per_sec
        self.burst = rate_bytes_per_sec * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()

    def consume(self, nbytes: int) -> None:
        """Account for ``nbytes`` just transferred, sleeping as long as needed to keep the rate."""
        if nbytes <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - nbytes
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def observe(self, nbytes: int, seconds: float) -> None:
        """A read of ``nbytes`` took ``seconds``: a fixed limit does not care."""

    def waited(self, seconds: float) -> None:
        """The reader's thread waited on other I/O: a fixed limit does not care."""

    def restart(self) -> None:
        """Reads stopped for a while (a pause): the bucket's burst cap already covers it."""

    def set_rate(self, rate_bytes_per_sec: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self.rate = max(1, rate_bytes_per_sec)
            self.burst = self.rate * BURST_SECONDS
            # A debt run up at a higher rate would otherwise be paid at the new, lower one.
            self._tokens = max(self._tokens, -self.burst)

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate}
