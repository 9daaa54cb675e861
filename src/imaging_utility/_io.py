"""Writing large buffers to files in pieces, and dropping what is written from the page cache.

Measured on the project's VM (docs/performance.md): writing 1.4 GiB to a new file costs ~1.5 s of
system time in 1 MiB ``write``/``pwrite`` calls but ~0.27 s in 128 KiB ones (the page cache takes
small writes far more cheaply there; elsewhere the smaller calls cost nothing measurable).  Every
large write of image data, restored data and extracted files goes through these.  Partial writes are
continued; ``OSError`` propagates for the caller to translate.
"""

from __future__ import annotations

import os

PIECE = 128 * 1024


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
