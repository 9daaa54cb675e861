"""How many worker threads a job may run.  Each one keeps chunks in flight (a capture about two buffers,
a restore or a verify about two decoded chunks), so ``--threads`` times the chunk size is memory: neither a
``--threads`` value nor the chunk size an image declares (up to 256 MiB) may make that more than the
machine can hold.  Threads are lowered to fit ``memory_budget()``; never below one."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

MiB = 1 << 20
MAX_THREADS = 1024  # what --threads accepts at all
BUDGET_CAP = 4096 * MiB
BUDGET_FLOOR = 256 * MiB


def memory_budget() -> int:
    """Bytes of chunks a job may keep in flight: a quarter of the machine's memory, at most 4 GiB, at least
    256 MiB (what the default 1 MiB chunks need with a thread per CPU on any machine)."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        phys = 0
    if phys <= 0:
        return 1024 * MiB
    return max(BUDGET_FLOOR, min(BUDGET_CAP, phys // 4))


def threads_within(threads: int, unit: int, per_thread: int = 2, fixed: int = 2) -> int:
    """``threads`` (at least 1), lowered until ``per_thread × threads + fixed`` units of ``unit`` bytes fit
    in ``memory_budget()``."""
    cap = (memory_budget() // max(1, unit) - fixed) // per_thread
    return max(1, min(threads, cap))


class ByteBudget:
    """At most ``total`` bytes held at once by the threads that take them, whatever the number of threads
    (a request larger than ``total`` waits until it is alone).  Thread-safe."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._free = self.total
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = max(0, min(n, self.total))
        with self._cv:
            while self._free < n:
                self._cv.wait()
            self._free -= n
        try:
            yield
        finally:
            with self._cv:
                self._free += n
                self._cv.notify_all()


# Chunks being decoded through the image readers' caches, all readers of the process together: a server
# with many clients (or a hostile one asking for the last bytes of many 256 MiB chunks at once) decodes at
# most this much at a time.
DECODES = ByteBudget(memory_budget())
