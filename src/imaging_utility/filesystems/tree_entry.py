"""The records a file tree hands out (``Entry``, ``Layout``), what a filesystem adapter provides
(``Backend``), and how a name on disk becomes a path component (``escape_name``); see ``tree.py``."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Protocol

__all__ = ["KINDS", "TYPE_BITS", "Backend", "Entry", "Layout", "escape_name"]

TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO,
             "socket": stat.S_IFSOCK, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
KINDS = {bits: kind for kind, bits in TYPE_BITS.items()}  # stat.S_IFMT(mode) -> Entry.type


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry.

    ``type`` is file, dir, symlink, fifo, socket, char (character device), block (block device),
    reparse (an NTFS reparse point that is no link), other or damaged.  The POSIX fields (``mode``,
    ``uid``, ``gid``, ``rdev``, ``atime_ns``) are ``None`` where the filesystem has none (NTFS, FAT,
    exFAT): a writer then uses its defaults.
    """

    name: str
    path: str
    type: str
    size: int = 0
    mtime_ns: int | None = None
    mode: int | None = None  # permission bits with set-uid/set-gid/sticky (``stat.S_IMODE``)
    target: str | None = None  # symlink: the target to create (never followed); reparse: as stored
    inode: int | None = None  # ext inode, NTFS MFT record number, FAT/exFAT first cluster
    nlink: int | None = None
    streams: tuple[str, ...] = ()  # NTFS alternate data stream names
    error: str | None = None  # set when type == "damaged"
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    rdev: int | None = None  # char/block devices: ``os.makedev(major, minor)``

    @property
    def perm(self) -> int:
        """``mode``, or what a filesystem without POSIX modes gets: 0755 directories, 0777 symlinks, 0644 others."""
        if self.mode is not None:
            return self.mode
        return {"dir": 0o755, "symlink": 0o777}.get(self.type, 0o644)

    @property
    def st_mode(self) -> int:
        """File type and permission bits as ``os.stat`` would give them (type bits 0 for reparse, damaged)."""
        return TYPE_BITS.get(self.type, 0) | self.perm

    @property
    def mtime(self) -> dt.datetime | None:
        if self.mtime_ns is None:
            return None
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=self.mtime_ns // 1000)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path, "type": self.type, "size": self.size,
                               "mtime": self.mtime.isoformat() if self.mtime else None, "inode": self.inode}
        for key in ("mode", "target", "nlink", "error", "uid", "gid"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.rdev is not None:
            out["rdev"] = [os.major(self.rdev), os.minor(self.rdev)]
        if self.streams:
            out["streams"] = list(self.streams)
        return out


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a file's bytes are: ``runs`` ((file_offset, disk_offset or None for a hole, length), covering
    ``[0, size)`` in order) when they can be read straight from the source, else ``opener`` (a dissect
    stream for resident, inline or compressed data, read under the tree lock).  ``check(disk_offset,
    data)``, when given, is called under the tree lock with what was read from each run, and raises
    if the filesystem's own data checksums say it is damaged.  ``stored``, for compressed data read
    through ``opener``: ``(disk_offset, length, file_offset, file_length)`` of its clusters on the source,
    each spoiling the whole file range (its compression unit) if any of its bytes is lost."""

    size: int
    runs: list[tuple[int, int | None, int]] | None
    opener: Callable[[], IO[bytes]] | None = None
    check: Callable[[int, memoryview], None] | None = None
    stored: list[tuple[int, int, int, int]] | None = None


class Backend(Protocol):
    """What a filesystem adapter provides.  Nodes and refs are the adapter's own objects.

    Optional: ``xattrs(node) -> list[tuple[str, bytes]]`` (extended attributes under their Linux names,
    POSIX ACLs as ``system.posix_acl_*`` in the Linux xattr format) and ``link_target(entry, find) -> str``
    (a symlink's target to create; ``find(components)`` is the volume path a case-insensitive lookup
    of those components reaches, or ``None``).  Backends without them have neither.
    """

    fs_type: str
    case_insensitive: bool
    dot_entries: bool  # directories hold their own "." and ".." entries (ext, FAT), to be left out

    def root(self) -> Any: ...
    def children(self, node: Any) -> Iterable[tuple[str, Any]]: ...
    def load(self, ref: Any) -> Any: ...
    def describe(self, node: Any, name: str, path: str) -> Entry: ...
    def layout(self, node: Any, stream: str | None) -> Layout: ...
    def key(self, node: Any) -> int | None: ...
    def label(self, node: Any) -> str: ...



def escape_name(raw: str) -> str:
    """A name as a path component: ``/`` → ``%2F``, NUL → ``%00``, empty → ``%``, ``..`` → ``%2E%2E``."""
    if not raw:
        return "%"
    if raw in (".", ".."):
        return "%2E" * len(raw)
    return raw.replace("/", "%2F").replace("\0", "%00")
