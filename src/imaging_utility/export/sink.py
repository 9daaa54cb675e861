"""Where a writer's bytes go: ``Sink``, positional writes to an open file.

OS errors become the project's errors here, with the path and offset: no space (ENOSPC, EDQUOT,
EFBIG) → ``NoSpaceError`` (exit 7), permission → ``PermissionDeniedError``, anything else →
``TargetIOError``.  The sink is sticky: after its first error every call raises that error again.
Not thread-safe: one writer thread uses it.
"""

from __future__ import annotations

import errno
import os

from .._io import pwrite_all
from ..errors import Error, NoSpaceError, PermissionDeniedError, TargetIOError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Sink:
    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.written = 0  # bytes handed to pwrite
        self.end = 0  # highest offset written or truncated to
        self._error: Error | None = None

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
