"""Read-only file trees inside a filesystem: list, stat, open and map files without mounting.

``open_tree(source)`` detects NTFS, ext2/3/4, FAT12/16/32, exFAT, XFS or Btrfs at offset 0 of a
``BlockSource`` and returns a ``FileTree`` over dissect.ntfs / dissect.extfs / dissect.fat /
dissect.xfs / dissect.btrfs (the per-filesystem adapters are ``tree_ntfs.py``, ``tree_ext.py``,
``tree_fat.py``, ``tree_xfs.py`` and ``tree_btrfs.py``).

Paths are POSIX-style and absolute (``/dir/file``); ``..`` is resolved lexically.  A name on disk
that cannot be a path component is shown escaped: ``/`` as ``%2F``, NUL as ``%00``, the empty
name as ``%``, a file named ``.`` or ``..`` as ``%2E`` or ``%2E%2E``; a directory's own ``.`` and ``..``
entries (ext and FAT: the first of each) are never listed.  NTFS and FAT lookups fall
back to a case-insensitive match, as Windows does.

Thread-safety: a ``FileTree`` may be shared by threads.  Metadata (dissect) calls run under one
lock; file data of plain (non-resident, uncompressed) files is read straight from the source with
``readinto_at``, outside the lock, so several streams read in parallel.  A stream object itself
is for one thread.

Errors: a missing path is ``NotFoundError``; metadata that cannot be parsed (a damaged MFT record,
inode or directory) is ``CorruptImageError`` naming the path and record; read errors of the source
(``SourceIOError``, ``ChunkCorruptError``) pass through unchanged.  In a listing, an entry whose own
record is damaged is returned with ``type == "damaged"`` and ``error`` set, so the rest still lists.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import io
import os
import posixpath
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any, Protocol

from ..blocks import BlockSource
from ..errors import CorruptImageError, Error, NotFoundError, UnsupportedError, UsageError

__all__ = ["Entry", "FileStream", "FileTree", "Layout", "escape_name", "open_tree"]

Run = tuple[int, int, int]  # (file_offset, disk_offset, length)
RunList = list[Run]  # aliases: inside FileTree, ``list`` is the method
Names = list[str]
XattrList = list[tuple[str, bytes]]


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
    stream for resident, inline or compressed data, read under the tree lock)."""

    size: int
    runs: list[tuple[int, int | None, int]] | None
    opener: Callable[[], IO[bytes]] | None = None


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
    def children(self, node: Any) -> list[tuple[str, Any]]: ...
    def load(self, ref: Any) -> Any: ...
    def describe(self, node: Any, name: str, path: str) -> Entry: ...
    def layout(self, node: Any, stream: str | None) -> Layout: ...
    def key(self, node: Any) -> int | None: ...
    def label(self, node: Any) -> str: ...


class _Seekable(io.RawIOBase):
    """Position bookkeeping shared by the raw streams below: ``size`` bytes, seekable, read-only."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class BlockFile(_Seekable):
    """A seekable binary file over ``BlockSource.readinto_at`` for dissect; not thread-safe (the tree's lock is)."""

    def __init__(self, source: BlockSource) -> None:
        super().__init__(source.size)
        self.source = source

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n:
            self.source.readinto_at(self._pos, view[:n])
            self._pos += n
        return n


class FileStream(_Seekable):
    """A readable, seekable stream of one file's data; reads never load more than asked for."""

    def __init__(self, tree: FileTree, layout: Layout, label: str) -> None:
        super().__init__(layout.size)
        self._tree = tree
        self._runs = layout.runs
        self._starts = [r[0] for r in layout.runs] if layout.runs is not None else []
        self._fallback: IO[bytes] | None = None
        if layout.runs is None and layout.opener is not None:
            with tree._guard(label):
                self._fallback = layout.opener()
        self._label = label

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        if not want:
            return 0
        if self._runs is None:
            return self._read_fallback(view[:want])
        done = 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        while done < want:
            if i < 0 or i >= len(self._runs):
                raise CorruptImageError(f"{self._label}: no data run maps file offset {self._pos}")
            start, disk, length = self._runs[i]
            rel = self._pos - start
            take = min(want - done, length - rel)
            if take <= 0:
                i += 1
                continue
            part = view[done : done + take]
            if disk is None:
                part[:] = bytes(take)
            else:
                at, end = disk + rel, self._tree.source.size
                if at < 0 or at + take > end:  # a run past a truncated or lying volume: this file is damaged
                    raise CorruptImageError(f"{self._label}: its data at byte {at} lies outside the volume "
                                            f"({end} bytes)")
                self._tree.source.readinto_at(at, part)
            done += take
            self._pos += take
            i += 1
        return done

    def _read_fallback(self, view: memoryview) -> int:
        assert self._fallback is not None
        with self._tree._guard(self._label):
            self._fallback.seek(self._pos)
            data = self._fallback.read(len(view))
        if len(data) != len(view):
            raise CorruptImageError(f"{self._label}: data ends at {self._pos + len(data)}, size says {self.size}")
        view[:] = data
        self._pos += len(data)
        return len(data)

    def holes(self) -> list[tuple[int, int]]:
        """``(file_offset, length)`` ranges that are sparse holes (read as zeros, not stored)."""
        return [(s, n) for s, d, n in self._runs or [] if d is None]


def _about(path: str, e: Exception) -> str:
    """``e``'s message, naming ``path`` once."""
    return str(e) if path in str(e) else f"{path}: {e}"


def escape_name(raw: str) -> str:
    """A name as a path component: ``/`` → ``%2F``, NUL → ``%00``, empty → ``%``, ``..`` → ``%2E%2E``."""
    if not raw:
        return "%"
    if raw in (".", ".."):
        return "%2E" * len(raw)
    return raw.replace("/", "%2F").replace("\0", "%00")


class FileTree:
    """The file tree of one filesystem; see the module docstring for paths, threads and errors."""

    def __init__(self, backend: Backend, source: BlockSource) -> None:
        self.backend = backend
        self.source = source
        self.fs_type = backend.fs_type
        self._lock = threading.RLock()
        self._dirs: OrderedDict[str, tuple[list[tuple[str, Any]], dict[str, Any]]] = OrderedDict()
        self._nodes: OrderedDict[str, Any] = OrderedDict()
        self._root = backend.root()
        self._resolving = False

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Hold the lock; turn parser failures into one clear ``CorruptImageError`` about ``what``."""
        with self._lock:
            try:
                yield
            except Error:
                raise
            except RecursionError:
                raise CorruptImageError(f"{self.fs_type}: {what}: directory structure nests too deep "
                                        "(a loop?)") from None
            except (ValueError, KeyError, IndexError, EOFError, OverflowError, struct.error, TypeError,
                    AttributeError, UnicodeError, OSError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CorruptImageError(f"{self.fs_type}: {what} is unreadable: {msg}") from None
            except Exception as e:  # dissect's own exception classes
                if type(e).__module__.startswith("dissect."):
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise CorruptImageError(f"{self.fs_type}: {what} is unreadable: {msg}") from None
                raise

    @staticmethod
    def normalize(path: str) -> str:
        norm = posixpath.normpath("/" + path.strip())
        return "/" + norm.lstrip("/")

    def _listing(self, path: str, node: Any) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        """A directory's (name, ref) pairs in on-disk order, and the first ref of each name."""
        cached = self._dirs.get(path)
        if cached is not None:
            self._dirs.move_to_end(path)
            return cached
        try:
            with self._guard(f"directory {path} ({self.backend.label(node)})"):
                raw = self.backend.children(node)
        except CorruptImageError as e:
            raise CorruptImageError(_about(f"directory {path}", e)) from None
        kids: list[tuple[str, Any]] = []
        dots = {".", ".."} if self.backend.dot_entries else set()
        for n, ref in raw:
            if n in dots:  # the directory's own entry; a second one is a hostile name, shown escaped
                dots.discard(n)
                continue
            kids.append((escape_name(n), ref))
        index: dict[str, Any] = {}
        for n, ref in kids:
            index.setdefault(n, ref)
        self._dirs[path] = (kids, index)
        if len(self._dirs) > 256:
            self._dirs.popitem(last=False)
        return kids, index

    def _node(self, path: str) -> Any:
        path = self.normalize(path)
        if path == "/":
            return self._root
        with self._lock:
            hit = self._nodes.get(path)
            if hit is not None:
                return hit
            parent_path, name = posixpath.split(path)
            parent = self._node(parent_path)
            if self.stat(parent_path).type != "dir":
                raise NotFoundError(f"{parent_path} in the {self.fs_type} filesystem is not a directory")
            kids, index = self._listing(parent_path, parent)
            ref = index.get(name)
            if ref is None and self.backend.case_insensitive:
                ref = next((r for n, r in kids if n.casefold() == name.casefold()), None)
            if ref is None:
                raise NotFoundError(f"{path}: no such file or directory in the {self.fs_type} filesystem")
            try:
                with self._guard(path):
                    node = self.backend.load(ref)
            except CorruptImageError as e:
                raise CorruptImageError(_about(path, e)) from None
            self._nodes[path] = node
            if len(self._nodes) > 4096:
                self._nodes.popitem(last=False)
            return node

    def stat(self, path: str) -> Entry:
        path = self.normalize(path)
        node = self._node(path)
        name = posixpath.basename(path)
        with self._guard(f"{path}"):
            return self._linked(self.backend.describe(node, name, path))

    def list(self, path: str = "/") -> list[Entry]:
        """The entries of directory ``path`` in on-disk order; damaged children come back as ``damaged``."""
        path = self.normalize(path)
        with self._lock:
            if self.stat(path).type != "dir":
                raise NotFoundError(f"{path} in the {self.fs_type} filesystem is not a directory")
            kids, _index = self._listing(path, self._node(path))
            out: list[Entry] = []
            for name, ref in kids:
                child = posixpath.join(path, name)
                try:
                    with self._guard(child):
                        node = self.backend.load(ref)
                        out.append(self._linked(self.backend.describe(node, name, child)))
                except CorruptImageError as e:
                    out.append(Entry(name, child, "damaged", error=_about(child, e)))
            return out

    def _linked(self, entry: Entry) -> Entry:
        """``entry`` with its symlink target as the backend would have it created (NTFS: relative when an
        absolute Windows target lies inside this volume).  Not re-entered: a lookup that meets another
        such link while resolving leaves that one's target as stored."""
        hook = getattr(self.backend, "link_target", None)
        if hook is None or entry.type != "symlink" or self._resolving:
            return entry
        self._resolving = True
        try:
            target = hook(entry, self._find)
            return replace(entry, target=target, size=len(os.fsencode(target)))
        finally:
            self._resolving = False

    def _find(self, components: Names) -> str | None:
        """The path (names as listed) that ``components`` reach from the root, matching case-insensitively."""
        path = "/"
        for comp in components:
            try:
                if self.stat(path).type != "dir":
                    return None
                kids, index = self._listing(path, self._node(path))
            except (NotFoundError, CorruptImageError):
                return None
            name = comp if comp in index else next((n for n, _ in kids if n.casefold() == comp.casefold()), None)
            if name is None:
                return None
            path = posixpath.join(path, name)
        return path

    def xattrs(self, path: str) -> XattrList:
        """Extended attributes of ``path`` (empty where the filesystem has none)."""
        hook = getattr(self.backend, "xattrs", None)
        if hook is None:
            return []
        path = self.normalize(path)
        node = self._node(path)
        with self._guard(f"extended attributes of {path}"):
            return list(hook(node))

    def walk(self, path: str = "/") -> Iterator[Entry]:
        """Every entry below ``path`` (depth first, directories before their contents).

        A directory that cannot be listed or that loops back to one of its ancestors is yielded
        again with ``type == "damaged"`` and ``error`` set, and not descended into.
        """
        top = self.stat(path)
        yield from self._walk(top, (self.backend.key(self._node(top.path)),))

    def _walk(self, directory: Entry, ancestors: tuple[int | None, ...]) -> Iterator[Entry]:
        try:
            entries = self.list(directory.path)
        except CorruptImageError as e:
            yield replace(directory, type="damaged", error=str(e))
            return
        for entry in entries:
            yield entry
            if entry.type != "dir":
                continue
            key = self.backend.key(self._node(entry.path))
            if key is not None and key in ancestors:
                yield replace(entry, type="damaged",
                              error=f"{self.fs_type}: {entry.path} loops back to a parent directory; not followed")
                continue
            if len(ancestors) > 512:
                yield replace(entry, type="damaged", error=f"{entry.path}: directories nest deeper than 512")
                continue
            yield from self._walk(entry, (*ancestors, key))

    def layout(self, path: str, stream: str | None = None) -> Layout:
        path = self.normalize(path)
        entry = self.stat(path)
        if entry.type == "dir" and stream is None:
            raise NotFoundError(f"{path} is a directory in the {self.fs_type} filesystem, not a file")
        if stream and stream not in entry.streams:
            raise NotFoundError(f"{path} has no stream {stream!r} in the {self.fs_type} filesystem")
        with self._guard(f"data of {path}" + (f":{stream}" if stream else "")):
            return self.backend.layout(self._node(path), stream)

    def open(self, path: str, stream: str | None = None) -> FileStream:
        """A stream over the file's data (or its NTFS alternate data stream ``stream``)."""
        label = self.normalize(path) + (f":{stream}" if stream else "")
        return FileStream(self, self.layout(path, stream), label)

    def data_runs(self, path: str, stream: str | None = None) -> RunList:
        """``(file_offset, disk_offset, length)`` of the file's data on the source; holes left out.

        Data stored inside metadata (NTFS resident, ext inline) or compressed has no plain runs: ``[]``.
        """
        return [(f, d, n) for f, d, n in self.layout(path, stream).runs or [] if d is not None]


def runs_from_clusters(runs: list[tuple[int | None, int]], cluster: int, base: int, size: int,
                       label: str) -> list[tuple[int, int | None, int]]:
    """``(cluster or None, count)`` runs → byte runs clipped to ``size``; a short chain is an error."""
    out: list[tuple[int, int | None, int]] = []
    pos = 0
    for lcn, count in runs:
        if pos >= size:
            break
        length = min(count * cluster, size - pos)
        if length <= 0:
            continue
        out.append((pos, None if lcn is None else base + lcn * cluster, length))
        pos += length
    if pos < size:
        raise CorruptImageError(f"{label}: its clusters hold {pos} bytes but its size is {size}")
    return out


def open_tree(source: BlockSource, subvolume: str | None = None) -> FileTree:
    """The file tree of the filesystem at offset 0 of ``source`` (Btrfs: of ``subvolume``, default: the
    default subvolume).

    Raises:
        UnsupportedError: no NTFS, ext2/3/4, FAT, exFAT, XFS or Btrfs filesystem there.
        UsageError: an LVM2 physical volume (a logical volume must be chosen), or ``subvolume`` on
            something other than Btrfs.
        CorruptImageError: the filesystem's root structures cannot be parsed.
    """
    from . import detect

    info = detect(source)
    if info is None:
        raise UnsupportedError("no NTFS, ext2/3/4, FAT or exFAT filesystem found at offset 0, nor XFS or Btrfs "
                               "(whole disk? pick one with --partition N)")
    if info.type == "swap":
        raise UnsupportedError("this volume is Linux swap: it holds no files")
    if info.type == "lvm2":
        from .lvm_source import volume_names

        raise UsageError(f"this is an LVM2 physical volume: choose a logical volume with --lv VG/LV "
                         f"(volumes: {volume_names(source)})")
    if subvolume is not None and info.type != "btrfs":
        raise UsageError(f"--subvolume applies to Btrfs only; this filesystem is {info.type}")
    fh = BlockFile(source)
    backend: Backend
    try:
        if info.type == "ntfs":
            from .tree_ntfs import NtfsBackend

            backend = NtfsBackend(fh)
        elif info.type.startswith("ext"):
            from .tree_ext import ExtBackend

            backend = ExtBackend(fh, info.type)
        elif info.type == "xfs":
            from .tree_xfs import XfsBackend

            backend = XfsBackend(fh)
        elif info.type == "btrfs":
            from .tree_btrfs import BtrfsBackend

            backend = BtrfsBackend(fh, subvolume)
        elif info.type == "exfat":
            from .tree_fat import ExfatBackend

            backend = ExfatBackend(fh)
        else:
            from .tree_fat import FatBackend

            backend = FatBackend(fh, info.type)
    except Error:
        raise
    except RecursionError:
        raise CorruptImageError(f"{info.type}: directory structure nests too deep (a loop?)") from None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptImageError(f"{info.type} filesystem: cannot open its root structures: {msg}") from None
    return FileTree(backend, source)
