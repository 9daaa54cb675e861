"""A test-only FUSE filesystem: one read-only file ``/disk`` whose reads take as long as a test says.

Run as a process: ``python slow_fuse.py MOUNTPOINT SIZE DELAY_FILE``.  The file reads back a
repeating pattern; every read(2) first sleeps the number of seconds written in DELAY_FILE (re-read
at most ten times a second), the way a disk shared with a busy neighbour answers late.  Opened with
``direct_io``, so every read reaches us instead of the page cache.
"""

from __future__ import annotations

import errno
import stat
import sys
import time
from typing import Any

import mfusepy

PATTERN = bytes(range(256)) * 512  # 128 KiB, not all zero: the engine reads and compresses it


class SlowFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, size: int, delay_file: str) -> None:
        self.size = size
        self.delay_file = delay_file
        self.delay = 0.0
        self.checked = 0.0

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/disk":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", "disk"]

    def open(self, path: str, fi: Any) -> int:
        if path != "/disk":
            raise mfusepy.FuseOSError(errno.ENOENT)
        fi.direct_io = 1
        return 0

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
