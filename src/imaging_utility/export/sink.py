"""Where a writer's bytes go: ``Sink``, positional writes to an open file.

OS errors become the project's errors here, with the path and offset: no space (ENOSPC, EDQUOT,
EFBIG) → ``NoSpaceError`` (exit 7), permission → ``PermissionDeniedError``, anything else →
``TargetIOError``.  The sink is sticky: after its first error every call raises that error again.
Every 64 MiB written it starts the writeback of the new range (``sync_file_range``), so the final
fsync does not wait for the whole file, and drops the range before it, by then on the disk, from the page
cache (as ``storage.local`` does for images: a virtual disk of many gigabytes written once would push the
machine's working set out of memory).  Not thread-safe: one writer thread uses it.
"""

from __future__ import annotations

import errno
import os

from .._io import drop_cached, pwrite_all, start_writeback
from ..errors import Error, NoSpaceError, PermissionDeniedError, TargetIOError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
WRITE_BEHIND = 64 << 20


class Sink:
    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.written = 0  # bytes handed to pwrite
        self.end = 0  # highest offset written or truncated to
        self._error: Error | None = None
        self._kicked = 0  # ``written`` at the last write-behind
        self._behind = 0  # file offset up to which writeback was started
        self._dropped = 0  # file offset up to which pages were dropped from the page cache

    def _fail(self, e: OSError, offset: int) -> Error:
        if e.errno in _NO_SPACE:
            err: Error = NoSpaceError(f"no space left on the device of {self.path} at byte {offset}: {e.strerror}")
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            err = PermissionDeniedError(f"cannot write {self.path}: {e.strerror}")
        else:
            err = TargetIOError(f"write error on {self.path} at byte {offset}: {e.strerror}")
        self._error = err
        return err

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if self._error is not None:
            raise self._error
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as e:
            raise self._fail(e, offset) from None
        n = memoryview(data).nbytes
        self.written += n
        self.end = max(self.end, offset + n)
        if self.written - self._kicked >= WRITE_BEHIND:
            self._write_behind()

    def _write_behind(self) -> None:
        """Start the writeback of what was written since the last call, without waiting for it: the disk
        works while the export goes on, and the final fsync only waits for the tail (and dirty pages do
        not pile up to the kernel's throttling limits).  Writers append, so the range is the file's end."""
        self._kicked = self.written
        start, self._behind = self._behind, self.end
        if start > self._dropped:  # the range whose writeback started last time: written out by now
            drop_cached(self.fd, self._dropped, start - self._dropped)
            self._dropped = start
        start_writeback(self.fd, start, self.end - start)

    def truncate(self, size: int) -> None:
        """Give the file exactly ``size`` bytes (a hole at the end reads as zeros)."""
        if self._error is not None:
            raise self._error
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise self._fail(e, size) from None
        self.end = size

    def sync(self) -> None:
        if self._error is not None:
            raise self._error
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise self._fail(e, self.end) from None
        drop_cached(self.fd)

