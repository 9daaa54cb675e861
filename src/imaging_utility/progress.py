"""Progress as events: the CLI bar, ``--json`` lines and the GUI consume the same ones.

Nothing below ``cli/`` prints; operations call a ``ProgressCallback`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    operation: str  # "image", "resume-scan", "verify", "restore", ...
    done: int  # bytes of the logical source/image handled so far
    total: int
    output_bytes: int = 0  # compressed bytes written (image) or bytes written (restore)
    read_bytes: int = 0  # bytes actually read from the source
    started: float = field(default_factory=time.monotonic)
    message: str = ""

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def rate(self) -> float:
        """Bytes of ``done`` per second so far."""
        return self.done / self.elapsed


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    return None


class Throttled:
    """Forward at most one event per ``interval`` seconds (and always the last one via ``flush``)."""

    def __init__(self, callback: ProgressCallback, interval: float = 0.2) -> None:
        self.callback = callback
        self.interval = interval
        self._last = 0.0
        self._pending: ProgressEvent | None = None

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._pending = None
            self.callback(event)
        else:
            self._pending = event

    def flush(self) -> None:
        if self._pending is not None:
            self.callback(self._pending)
            self._pending = None
