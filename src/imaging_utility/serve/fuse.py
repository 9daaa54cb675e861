"""Read-only FUSE filesystem: a ``BlockSource`` as ``disk.raw`` plus a file per volume in it (``p1.raw``…).

Spec: libfuse 3 high-level API (``fuse.h``, ``fuse_main``), through the ``mfusepy`` ctypes binding.  The
files are ready for ``mount -o ro,loop DIR/p1.raw /mnt``.  Multithreaded (``readinto_at`` is thread-safe),
page cache on (``direct_io`` off, ``kernel_cache``: the image never changes under us), large reads.
libfuse's own handlers unmount cleanly on SIGINT/SIGTERM/SIGHUP, and ``fusermount3 -u DIR`` ends the
loop the same way; ``auto_unmount`` also cleans up if the process is killed.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..blocks import BlockSource
from ..errors import CorruptImageError, NotFoundError, UnsupportedError

log = logging.getLogger(__name__)

MAX_READ = 1024 * 1024  # bytes per FUSE read request; the kernel may still cap it lower
READ_AHEAD = 4 * 1024 * 1024


def require_fuse() -> None:
    """Raise ``UnsupportedError`` naming what to install unless mfusepy and libfuse3 load."""
    _load_mfusepy()


def _load_mfusepy() -> Any:
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), "libfuse3.so.3")
    if getattr(sys, "frozen", False) and os.path.exists(bundled):
        # the standalone build carries the libfuse3 it was tested with (a rescue system may lack it)
        os.environ.setdefault("FUSE_LIBRARY_PATH", bundled)
    try:
        import mfusepy
    except ImportError:
        raise UnsupportedError("FUSE support needs the Python module mfusepy, which is not installed: "
                               "pip install mfusepy") from None
    except OSError:  # mfusepy raises at import when it finds no libfuse
        raise UnsupportedError("FUSE needs the libfuse3 library, which is not installed: "
                               "apt-get install libfuse3-3 fuse3 (Debian/Ubuntu; dnf install fuse3-libs "
                               "fuse3 on Fedora)") from None
    return mfusepy


def make_operations(files: Mapping[str, BlockSource]) -> Any:
    """An ``mfusepy.Operations`` instance serving ``files`` read-only (separate for testing)."""
    mfusepy = _load_mfusepy()

    class BlockFiles(mfusepy.Operations):  # type: ignore[misc,name-defined]
        use_ns = True

        def __init__(self) -> None:
            self.files = {"/" + name: src for name, src in files.items()}
            now = time.time_ns()
            self.times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            self.uid, self.gid = os.getuid(), os.getgid()

        def _source(self, path: str) -> BlockSource:
            src = self.files.get(path)
            if src is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return src

        def init_with_config(self, conn: Any, config: Any) -> None:
            if config is not None:
                config.kernel_cache = 1
            if conn is not None and hasattr(conn, "max_readahead"):
                conn.max_readahead = min(conn.max_readahead or READ_AHEAD, READ_AHEAD)
            if conn is not None and hasattr(conn, "max_read"):
                # libfuse 3 refuses the mount (EPROTO) unless init() agrees with the max_read option;
                # libfuse 2, which mfusepy prefers when both are installed, has no such field
                conn.max_read = MAX_READ

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            base = {"st_uid": self.uid, "st_gid": self.gid, **self.times}
            if path == "/":
                return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            src = self._source(path)
            return {**base, "st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": src.size,
                    "st_blocks": (src.size + 511) // 512, "st_blksize": max(4096, src.sector_size)}

        def readdir(self, path: str, fh: int) -> list[str]:
            if path != "/":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return [".", "..", *(name[1:] for name in self.files)]

        def open(self, path: str, flags: int) -> int:
            self._source(path)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            src = self._source(path)
            n = max(0, min(size, src.size - offset))
            if n == 0:
                return b""
            buf = bytearray(n)
            try:
                src.readinto_at(offset, buf)
            except (CorruptImageError, OSError) as e:
                log.warning("FUSE read of %d bytes at %d in %s failed: %s", n, offset, path, e)
                raise mfusepy.FuseOSError(errno.EIO) from None
            return bytes(buf)

        def statfs(self, path: str) -> dict[str, int]:
            total = sum(src.size for src in self.files.values())
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (total + 4095) // 4096,
                    "f_bfree": 0, "f_bavail": 0, "f_files": len(self.files), "f_ffree": 0, "f_namemax": 255}

    return BlockFiles()


def mount(files: Mapping[str, BlockSource], mountpoint: str, *, allow_other: bool = False,
          debug: bool = False) -> None:
    """Mount ``files`` read-only at ``mountpoint`` and serve until unmounted (blocks; foreground).

    Background mode is the caller's choice of process (``cli/mount.py`` starts a detached child),
    so no fork happens inside a process that may already run threads.
    """
    if not os.path.isdir(mountpoint):
        raise NotFoundError(f"mount point is not a directory: {mountpoint}")
    mfusepy = _load_mfusepy()
    ops = make_operations(files)
    options: dict[str, Any] = {"ro": True, "fsname": "imaging-utility", "subtype": "imaging-utility",
                               "max_read": MAX_READ, "auto_unmount": True, "default_permissions": True}
    if allow_other:
        options["allow_other"] = True
    # libfuse installs its unmount-and-exit handlers only where the disposition is SIG_DFL; Python's own
    # handlers would never run while the main thread sits inside fuse_main.
    saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=False, debug=debug, **options)
    except RuntimeError as e:
        raise UnsupportedError(f"FUSE mount at {mountpoint} failed ({e}); is /dev/fuse available?") from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
