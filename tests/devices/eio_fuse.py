"""A test-only FUSE filesystem: one read-only file ``/disk`` that fails chosen sectors with EIO.

Run as a process: ``python eio_fuse.py BACKING MOUNTPOINT SECTOR_SIZE BAD,BAD,...``.
It serves BACKING's bytes; a read touching any bad sector fails with EIO, as a
disk does.  The file is opened with ``direct_io`` so every read(2) reaches us
with its own offset and length instead of being widened to pages by the cache.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import mfusepy


class OneFileFS(mfusepy.Operations):  # type: ignore[misc]
    """A directory holding one read-only file ``/disk`` of ``size`` bytes, opened with ``direct_io``;
    subclasses answer its reads."""

    use_ns = True
    size = 0

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


class EioFS(OneFileFS):

    def __init__(self, backing: str, sector_size: int, bad: set[int]) -> None:
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.sector_size = sector_size
        self.bad = bad

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        end = min(offset + size, self.size)
        first, last = offset // self.sector_size, (end - 1) // self.sector_size
        if end > offset and any(s in self.bad for s in range(first, last + 1)):
            raise mfusepy.FuseOSError(errno.EIO)
        return os.pread(self.fd, end - offset, offset) if end > offset else b""


def main() -> None:
    backing, mountpoint, sector_size, bad = sys.argv[1:5]
    fs = EioFS(backing, int(sector_size), {int(s) for s in bad.split(",") if s})
    mfusepy.FUSE(fs, mountpoint, raw_fi=True, foreground=True, nothreads=True, ro=True)


if __name__ == "__main__":
    main()
