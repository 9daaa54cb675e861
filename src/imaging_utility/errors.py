"""One exception hierarchy; each class carries its exit code (DESIGN §7).

Only ``cli.main`` turns these into process exit codes.  Messages are written at
the raise site and say what happened, to what (path, offset, chunk) and what to
do next.  Leaf classes also inherit the matching builtin where one exists, so
callers that only know ``OSError`` or ``ValueError`` still catch them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_NOT_FOUND = 4
EXIT_PERMISSION = 5
EXIT_IO = 6
EXIT_NO_SPACE = 7
EXIT_CORRUPT = 8
EXIT_REFUSED = 9
EXIT_CANNOT_RESUME = 10
EXIT_INTERRUPTED = 130


class Error(Exception):
    """Base of every error the tool reports; ``exit_code`` is what the process exits with."""

    exit_code: int = EXIT_INTERNAL


class UsageError(Error, ValueError):
    exit_code = EXIT_USAGE


class NotFoundError(Error, FileNotFoundError):
    """Source, target, image, partition or path inside an image not found or not usable."""

    exit_code = EXIT_NOT_FOUND


class UnsupportedError(Error):
    """The input exists but is not something this command can work with (e.g. unknown filesystem)."""

    exit_code = EXIT_NOT_FOUND


class PermissionDeniedError(Error, PermissionError):
    exit_code = EXIT_PERMISSION


class _SourceReadError(Error, OSError):
    """A read of the source failed; ``offset`` is the byte offset of the failed read when known."""

    exit_code = EXIT_IO

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceIOError(_SourceReadError):
    """Unreadable bytes in the source: what ``--rescue`` retries and zero-fills."""


class SourceShrankError(_SourceReadError):
    """The source ended before its size (a file truncated, a device resized while being read).  Not a
    ``SourceIOError``: nothing that retries or zero-fills unreadable sectors may take it for one."""


class TargetIOError(Error, OSError):
    exit_code = EXIT_IO

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoSpaceError(Error, OSError):
    exit_code = EXIT_NO_SPACE

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptImageError(Error, ValueError):
    """The image is malformed, truncated or fails a checksum."""

    exit_code = EXIT_CORRUPT


class ChunkCorruptError(CorruptImageError):
    """One chunk's frame failed to decode or its checksum did not match."""

    def __init__(self, message: str, chunk: int, offset: int) -> None:
        super().__init__(message)
        self.chunk = chunk
        self.offset = offset


class IncompleteImageError(CorruptImageError):
    """The image has no seek table: an interrupted capture, to be continued with ``--resume``."""


class VerificationError(CorruptImageError):
    pass


class RefusedError(Error):
    """Refused for safety: target too small, device mounted, would overwrite, identity mismatch."""

    exit_code = EXIT_REFUSED


class ResumeMismatchError(Error):
    exit_code = EXIT_CANNOT_RESUME


class Interrupted(Error):
    exit_code = EXIT_INTERRUPTED


def target_error(e: OSError, what: str) -> Error:
    """The error for an ``OSError`` met while trying to ``what`` (e.g. "write /x/backup.manifest.json") on a
    target: no space (ENOSPC, EDQUOT, EFBIG) → ``NoSpaceError``, permission (EACCES, EPERM, EROFS) →
    ``PermissionDeniedError``, anything else → ``TargetIOError``."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpaceError(f"no space left to {what}: {e.strerror}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"cannot {what}: {e.strerror}")
    return TargetIOError(f"cannot {what}: {e.strerror}")
