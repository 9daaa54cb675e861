"""A test-only FUSE filesystem: one read-only file ``/disk`` whose reads take as long as a test says.

Run as a process: ``python slow_fuse.py MOUNTPOINT SIZE DELAY_FILE``.  The file reads back a
repeating pattern; every read(2) first sleeps the number of seconds written in DELAY_FILE (re-read
at most ten times a second), the way a disk shared with a busy neighbour answers late.  Opened with
``direct_io``, so every read reaches us instead of the page cache.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import mfusepy
from eio_fuse import OneFileFS  # the script's own folder is on sys.path

PATTERN = bytes(range(256)) * 512  # 128 KiB, not all zero: the engine reads and compresses it


class SlowFS(OneFileFS):

    def __init__(self, size: int, delay_file: str) -> None:
        self.size = size
        self.delay_file = delay_file
        self.delay = 0.0
        self.checked = 0.0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        now = time.monotonic()
        if now - self.checked > 0.1:
            self.checked = now
            try:
                with open(self.delay_file) as f:
                    self.delay = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        if self.delay:
            time.sleep(self.delay)
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        start = offset % len(PATTERN)
        out = (PATTERN[start:] + PATTERN * (1 + (end - offset) // len(PATTERN)))[: end - offset]
        return out


def main() -> None:
    mountpoint, size, delay_file = sys.argv[1:4]
    mfusepy.FUSE(SlowFS(int(size), delay_file), mountpoint, raw_fi=True, foreground=True, nothreads=True,
                 ro=True)


if __name__ == "__main__":
    main()
