"""Writing large buffers to files in pieces, starting their writeback early, and dropping what is written
from the page cache.

Measured on the project's VM (docs/performance.md): writing 1.4 GiB to a new file costs ~1.5 s of
system time in 1 MiB ``write``/``pwrite`` calls but ~0.27 s in 128 KiB ones (the page cache takes
small writes far more cheaply there; elsewhere the smaller calls cost nothing measurable).  Every
large write of image data, restored data and extracted files goes through these.  Partial writes are
continued; ``OSError`` propagates for the caller to translate.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

PIECE = 128 * 1024
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + PIECE], offset + done)


def drop_cached(fd: int, offset: int = 0, length: int = 0) -> None:
    """Drop the clean pages of ``fd`` in [offset, offset + length) (0: to the end) from the page cache
    (``POSIX_FADV_DONTNEED``; pages still being written stay).  An image or a virtual disk is written once
    and seldom read back at once, so its gigabytes would only push the machine's working set out of
    memory, and a full page cache makes every page written cost a reclaim (measured: a third of
    ``backup-disk``'s system time on a machine whose memory was full of cache).  Only a hint."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """glibc's ``sync_file_range`` (Linux); ``None`` elsewhere: then the final fsync does all the work."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of ``fd`` in [offset, offset + length) to the disk, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk works while the job goes on, the final fsync
    waits only for the tail, and dirty pages do not pile up to the kernel's throttling limits.  No
    durability promise (that is the final fsync's); only a hint, a no-op where it is missing."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
