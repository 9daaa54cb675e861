"""Sources to image: regular files and Linux block devices, as ``BlockSource``.

Block devices are sized with ``BLKGETSIZE64`` and report their logical and
physical sector sizes (``BLKSSZGET``/``BLKPBSZGET``).  Reads are positional
(``os.preadv``), so one open source serves many threads.

Two read modes:

* buffered (default): the page cache reads whole pages, which already covers
  whole physical sectors.  ``POSIX_FADV_SEQUENTIAL`` widens the kernel's
  read-ahead, and each sequential read asks (``POSIX_FADV_WILLNEED``) for the
  next window of the same length so the disk is busy while we compress.
* ``direct=True`` (``O_DIRECT``): no page cache, so offsets, lengths and buffer
  addresses must be aligned.  Reads are aligned to the physical sector of a
  block device (4096 for regular files).  Callers that want the fast path
  allocate buffers with :func:`aligned_buffer`; any other buffer or an
  unaligned range is read through a per-thread aligned bounce buffer.

A buffered block device may also read its large reads directly
(:meth:`FileSource.read_large_direct`, which a capture turns on): reads of at
least ``DIRECT_MIN`` bytes that are aligned go through a second, ``O_DIRECT``
descriptor, everything else through the page cache.  A whole-disk capture then
costs one copy less per byte and does not push the machine's working set out
of the page cache, while the short reads of a fragmented filesystem keep the
read-ahead that ``O_DIRECT`` would lose.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading

from ..blocks import check_range
from ..errors import (
    Error,
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
    SourceIOError,
    SourceShrankError,
    UnsupportedError,
)
from ..extents import Extent, ExtentKind

BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
BLKGETSIZE64 = 0x80081272

#: Alignment used for O_DIRECT on regular files: safe for any filesystem block size up to a page.
FILE_DIRECT_ALIGN = 4096
#: Largest bounce buffer per thread; longer unaligned reads go through it in pieces.
BOUNCE_MAX = 8 << 20
#: Buffered reads at least this long trigger a WILLNEED hint for the following window.
READAHEAD_MIN = 64 << 10
#: With ``read_large_direct``: aligned reads at least this long bypass the page cache.
DIRECT_MIN = 256 << 10


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = bytearray(struct.calcsize(fmt))
    fcntl.ioctl(fd, request, buf)
    return int(struct.unpack(fmt, buf)[0])


def block_device_size(fd: int) -> int:
    """Size in bytes of the block device open as ``fd`` (``BLKGETSIZE64``)."""
    return _ioctl_int(fd, BLKGETSIZE64, "Q")


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned, writable buffer of ``size`` bytes, usable for ``O_DIRECT`` reads.

    Anonymous ``mmap`` memory starts on a page boundary, which satisfies every
    device's DMA alignment.  Allocate once and reuse: each call is a syscall.
    """
    return mmap.mmap(-1, max(size, 1))


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of a writable, C-contiguous, non-empty buffer."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def open_error(path: str, err: OSError, what: str = "source") -> Error:
    """Translate an ``OSError`` from opening ``path`` into the matching errors.py class."""
    code = err.errno
    if code == errno.ENOENT:
        return NotFoundError(f"{what} not found: {path}")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(f"permission denied opening {path} (run as root or add read access)")
    if code == errno.EBUSY:
        return RefusedError(f"{what} {path}: device busy (in use by another program or a mount)")
    if code == errno.ENOMEDIUM:
        return NotFoundError(f"no medium in {path} (insert the disc or card and retry)")
    if code in (errno.ENXIO, errno.ENODEV):
        return NotFoundError(f"{what} {path} is not present (device gone or not connected)")
    return SourceIOError(f"cannot open {path}: {err.strerror}")


def _has_data(path: str) -> bool:
    """Whether a file that says it is empty gives a byte when read (procfs and sysfs files do)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False  # the real open says why
    try:
        return bool(os.pread(fd, 1, 0))
    except OSError:
        return False
    finally:
        os.close(fd)


class FileSource:
    """A regular file or block device opened read-only.

    Thread-safe: reads are positional and the only per-call scratch state (the
    ``O_DIRECT`` bounce buffer) is per thread.  ``preadv`` releases the GIL.
    """

    def __init__(self, path: str, *, direct: bool = False) -> None:
        self.path = path
        self.fd = -1
        try:
            st = os.stat(path)
        except OSError as e:
            raise open_error(path, e) from None
        if stat.S_ISDIR(st.st_mode):
            raise UnsupportedError(f"source is a directory, not a file or block device: {path}")
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
            raise UnsupportedError(f"source is neither a regular file nor a block device: {path}")
        if stat.S_ISREG(st.st_mode) and not st.st_size and _has_data(path):
            raise UnsupportedError(f"{path} says it is 0 bytes long but has data (a procfs or sysfs file?): "
                                   "there is no size to image")
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:
                raise UnsupportedError(
                    f"{path} does not support O_DIRECT; run without --direct"
                ) from None
            raise open_error(path, e) from None
        self.direct = direct
        try:
            if self.is_block_device:
                self._size = _ioctl_int(self.fd, BLKGETSIZE64, "Q")
                self._sector_size = _ioctl_int(self.fd, BLKSSZGET, "i")
                self.physical_sector_size = max(_ioctl_int(self.fd, BLKPBSZGET, "I"), self._sector_size)
            else:
                self._size = st.st_size
                self._sector_size = 512
                self.physical_sector_size = 512
        except OSError as e:
            self.close()
            raise SourceIOError(f"cannot query size of {path}: {e.strerror}") from None
        self.mtime = st.st_mtime
        #: O_DIRECT alignment for offsets, lengths and buffer addresses.
        self.alignment = (
            self.physical_sector_size if self.is_block_device else FILE_DIRECT_ALIGN
        )
        self._local = threading.local()
        self._next_sequential = -1
        self._direct_fd = -1  # read_large_direct's O_DIRECT descriptor (open until close())
        self._direct_on = False
        if not direct:
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass  # only a hint; some filesystems refuse it

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self._sector_size

    def alloc_buffer(self, size: int) -> mmap.mmap:
        """A buffer that ``readinto_at`` fills without a bounce copy (see :func:`aligned_buffer`)."""
        return aligned_buffer(size)

    def read_large_direct(self) -> bool:
        """From now on read aligned ranges of ``DIRECT_MIN`` bytes or more with ``O_DIRECT`` (a buffered
        block device only).  Only for a device nobody writes through the page cache (no read-write
        mount): a direct read would miss data still waiting there.  False when it is not possible."""
        if self.direct or not self.is_block_device:
            return False
        if self._direct_fd < 0:
            try:
                self._direct_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
            except OSError:
                return False  # the device refuses O_DIRECT: every read stays buffered
            if os.fstat(self._direct_fd).st_rdev != os.fstat(self.fd).st_rdev:
                self._close_direct()  # the path now names another device: never read it
                return False
        self._direct_on = True
        return True

    def reads_direct(self, offset: int, length: int) -> bool:
        """Whether a read of ``length`` bytes at ``offset`` (into an aligned buffer) bypasses the page cache."""
        if self.direct:
            return True
        a = self.alignment
        return (self._direct_on and length >= DIRECT_MIN and offset % a == 0
                and (length % a == 0 or offset + length == self._size))

    def readinto_at(self, offset: int, buf: memoryview | bytearray | mmap.mmap) -> None:
        """Fill ``buf`` with the bytes at ``offset`` or raise ``SourceIOError`` naming the failed byte."""
        view = memoryview(buf).cast("B")
        check_range(self._size, offset, len(view))
        if not view:
            return
        if not self.direct:
            if (self.reads_direct(offset, len(view)) and not view.readonly
                    and buffer_address(view) % self.alignment == 0):
                try:
                    self._pread_full(view, offset, len(view), offset, self._direct_fd)
                    return
                except _DirectRefused:
                    # the device wants stricter alignment than it reports: read buffered from now on (the
                    # descriptor stays open until close(): another thread may be reading through it)
                    self._direct_on = False
            self._pread_full(view, offset, len(view), offset)
            if not self._direct_on:
                self._advise_next(offset, len(view))
        elif self._aligned(offset, view):
            self._pread_full(view, offset, len(view), offset)
        else:
            self._bounce_read(offset, view)

    def _aligned(self, offset: int, view: memoryview) -> bool:
        a = self.alignment
        end = offset + len(view)
        # A 512e disk's last sector may end off the physical grid; its size is still a multiple
        # of the logical sector, which is all O_DIRECT needs there.
        end_ok = end % a == 0 or (self.is_block_device and end == self._size)
        return offset % a == 0 and end_ok and not view.readonly and buffer_address(view) % a == 0

    def _bounce_read(self, offset: int, view: memoryview) -> None:
        a = self.alignment
        bounce = self._bounce(min(BOUNCE_MAX, _round_up(len(view) + a, a)))
        end = offset + len(view)
        pos = offset
        while pos < end:
            start = pos - pos % a
            stop = min(_round_up(end, a), start + len(bounce))
            # Past the end of the source the kernel returns a short read: ask only for what exists.
            self._pread_full(memoryview(bounce)[: stop - start], start, min(stop, self._size) - start, pos)
            take = min(end, stop) - pos
            view[pos - offset : pos - offset + take] = bounce[pos - start : pos - start + take]
            pos += take

    def _bounce(self, size: int) -> mmap.mmap:
        cur: mmap.mmap | None = getattr(self._local, "bounce", None)
        if cur is None or len(cur) < size:
            # The old one is left to the garbage collector rather than closed: a traceback kept
            # from a failed read may still hold a view of it, and close() would then fail.
            cur = aligned_buffer(size)
            self._local.bounce = cur
        return cur

    def _pread_full(self, view: memoryview, offset: int, need: int, report_from: int, fd: int = -1) -> None:
        """Read into ``view`` at ``offset`` until ``need`` bytes arrived; errors name the byte that
        failed, but never one before ``report_from`` (the caller's first byte)."""
        fd = self.fd if fd < 0 else fd
        done = 0
        while done < need:
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as e:
                if e.errno == errno.EINVAL and fd == self._direct_fd:
                    raise _DirectRefused from None
                raise self._read_error(max(offset + done, report_from), e) from None
            if n == 0:
                at = max(offset + done, report_from)
                now = "" if self.is_block_device else f" (now {os.fstat(fd).st_size} bytes)"
                raise SourceShrankError(
                    f"{self.path} ended at byte {at}{now}, expected {self._size} bytes: the source shrank "
                    "while being read (a file being truncated or rewritten, a device resized?)",
                    offset=at,
                )
            done += n

    def _read_error(self, at: int, err: OSError) -> Error:
        if err.errno == errno.ENOMEDIUM:
            return NotFoundError(f"medium removed from {self.path} while reading byte {at}")
        return SourceIOError(
            f"read error on {self.path} at byte {at} (sector {at // self._sector_size}): {err.strerror}",
            offset=at,
        )

    def _advise_next(self, offset: int, length: int) -> None:
        sequential = offset == self._next_sequential
        self._next_sequential = offset + length  # a benign race between threads: it is only a hint
        if sequential and length >= READAHEAD_MIN and offset + length < self._size:
            try:
                os.posix_fadvise(self.fd, offset + length, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass

    def extents(self, offset: int, length: int) -> list[Extent]:
        """DATA, except the holes of a sparse regular file (``SEEK_DATA``/``SEEK_HOLE``), reported as ZERO
        so they need not be read.  Thread-safe: the lseek position is never used for reading."""
        check_range(self._size, offset, length)
        if not length:
            return []
        whole = [Extent(offset, length, ExtentKind.DATA)]
        if self.is_block_device:
            return whole
        out: list[Extent] = []
        pos, end = offset, offset + length
        try:
            while pos < end:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as e:
                    # No data after pos: a trailing hole, unless the file shrank (then let the read fail).
                    if e.errno != errno.ENXIO or os.fstat(self.fd).st_size < end:
                        return whole
                    data = end
                if data > pos:
                    out.append(Extent(pos, min(data, end) - pos, ExtentKind.ZERO))
                    pos = min(data, end)
                    if pos >= end:
                        break
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
                out.append(Extent(pos, min(hole, end) - pos, ExtentKind.DATA))
                pos = min(hole, end)
        except OSError:
            return whole  # a filesystem without SEEK_DATA support: read everything
        return out

    def _close_direct(self) -> None:
        self._direct_on = False
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1

    def close(self) -> None:
        self._close_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirectRefused(Exception):
    """An O_DIRECT read of ``read_large_direct`` was refused (EINVAL): the device wants other alignment."""


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a
