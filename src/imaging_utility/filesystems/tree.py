"""Read-only file trees inside a filesystem: list, stat, open and map files without mounting.

``open_tree(source)`` detects NTFS, ext2/3/4, FAT12/16/32, exFAT, XFS or Btrfs at offset 0 of a
``BlockSource`` and returns a ``FileTree`` over dissect.ntfs / dissect.extfs / dissect.xfs /
dissect.btrfs and our own FAT and exFAT readers (the per-filesystem adapters are ``tree_ntfs.py``,
``tree_ext.py``, ``tree_fat.py``, ``tree_exfat.py``, ``tree_xfs.py`` and ``tree_btrfs.py``).

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

import contextlib
import os
import posixpath
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..blocks import BlockSource
from ..errors import CorruptImageError, Error, NotFoundError, UnsupportedError, UsageError
from .tree_entry import KINDS, TYPE_BITS, Backend, Entry, Layout, escape_name
from .tree_stream import BlockFile, FileStream, check_runs, runs_from_clusters

__all__ = ["KINDS", "TYPE_BITS", "BlockFile", "Entry", "FileStream", "FileTree", "Layout", "escape_name", "open_tree",
           "runs_from_clusters"]

Run = tuple[int, int, int]  # (file_offset, disk_offset, length)
RunList = list[Run]  # aliases: inside FileTree, ``list`` is the method
Names = list[str]
XattrList = list[tuple[str, bytes]]


def _about(path: str, e: Exception) -> str:
    """``e``'s message, naming ``path`` once."""
    return str(e) if path in str(e) else f"{path}: {e}"


INDEX_BUDGET = 200_000
"""Directory entries kept in name indexes for lookups, over all cached directories; a directory
with more entries than this is scanned for each lookup instead (streaming, bounded memory)."""


class FileTree:
    """The file tree of one filesystem; see the module docstring for paths, threads and errors.

    ``warnings`` holds one line for each thing the filesystem said that the reader should know
    (a journal that needs recovery); the commands show them.
    """

    def __init__(self, backend: Backend, source: BlockSource) -> None:
        self.backend = backend
        self.source = source
        self.fs_type = backend.fs_type
        self.warnings: list[str] = list(getattr(backend, "warnings", ()))
        self._lock = threading.RLock()
        self._indexes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._indexed = 0  # entries in ``_indexes``
        self._too_big: OrderedDict[str, None] = OrderedDict()  # directories scanned per lookup
        self._nodes: OrderedDict[str, Any] = OrderedDict()
        self._resolving = False
        with self._guard("the root directory"):
            self._root = backend.root()

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
                    AttributeError, UnicodeError, OSError, NotImplementedError) as e:
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

    def _scan(self, path: str, node: Any) -> Iterator[tuple[str, Any]]:
        """A directory's (name, ref) pairs in on-disk order, read as they are consumed.

        The lock is held for each step only, never across a ``yield``: a slow consumer (a WebDAV
        client reading a listing) does not stall other readers, and memory stays one block."""
        what = f"directory {path} ({self.backend.label(node)})"
        dots = {".", ".."} if self.backend.dot_entries else set()
        try:
            with self._guard(what):
                it = iter(self.backend.children(node))
            while True:
                with self._guard(what):
                    item: tuple[str, Any] | None = next(it, None)
                if item is None:
                    return
                n, ref = item
                if n in dots:  # the directory's own entry; a second one is a hostile name, shown escaped
                    dots.discard(n)
                    continue
                yield escape_name(n), ref
        except CorruptImageError as e:
            raise CorruptImageError(_about(f"directory {path}", e)) from None

    def _index(self, path: str, node: Any) -> dict[str, Any] | None:
        """Name → first ref of each name in directory ``path``; ``None`` for a directory too big to
        keep (``INDEX_BUDGET``), which lookups then scan."""
        index = self._indexes.get(path)
        if index is not None:
            self._indexes.move_to_end(path)
            return index
        if path in self._too_big:
            return None
        index = {}
        for n, ref in self._scan(path, node):
            index.setdefault(n, ref)
            if len(index) > INDEX_BUDGET:
                self._too_big[path] = None
                if len(self._too_big) > 256:
                    self._too_big.popitem(last=False)
                return None
        while self._indexes and self._indexed + len(index) > INDEX_BUDGET:
            self._indexed -= len(self._indexes.popitem(last=False)[1])
        self._indexes[path] = index
        self._indexed += len(index)
        return index

    def _match(self, parent_path: str, parent: Any, name: str) -> str | None:
        """The name as listed that ``name`` matches in the directory: itself, else case-insensitively."""
        index = self._index(parent_path, parent)
        if index is not None and name in index:
            return name
        folded = name.casefold()
        return next((n for n, _ in (index.items() if index is not None else self._scan(parent_path, parent))
                     if n.casefold() == folded), None)

    def _lookup(self, parent_path: str, parent: Any, name: str) -> Any:
        index = self._index(parent_path, parent)
        if index is not None:
            ref = index.get(name)
            if ref is not None or not self.backend.case_insensitive:
                return ref
        folded = name.casefold() if self.backend.case_insensitive else None
        exact = None
        for n, r in (index.items() if index is not None else self._scan(parent_path, parent)):
            if n == name:
                return r
            if exact is None and folded is not None and n.casefold() == folded:
                exact = r
        return exact

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
            ref = self._lookup(parent_path, parent, name)
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

    def iterdir(self, path: str = "/") -> Iterator[Entry]:
        """The entries of directory ``path`` in on-disk order, read as they are consumed (memory stays
        bounded however large the directory); damaged children come back as ``damaged``.  A
        directory that turns out unreadable part way raises ``CorruptImageError`` there."""
        path = self.normalize(path)
        with self._lock:
            if self.stat(path).type != "dir":
                raise NotFoundError(f"{path} in the {self.fs_type} filesystem is not a directory")
            node = self._node(path)
        for name, ref in self._scan(path, node):
            child = posixpath.join(path, name)
            try:
                with self._guard(child):
                    entry = self._linked(self.backend.describe(self.backend.load(ref), name, child))
            except CorruptImageError as e:
                entry = Entry(name, child, "damaged", error=_about(child, e))
            yield entry

    def list(self, path: str = "/") -> list[Entry]:
        """The entries of directory ``path`` in on-disk order; damaged children come back as ``damaged``."""
        return [*self.iterdir(path)]

    def _linked(self, entry: Entry) -> Entry:
        """``entry`` with its symlink target as the backend would have it created (NTFS: relative when an
        absolute Windows target lies inside this volume).  Not re-entered: a lookup that meets another
        such link while resolving leaves that one's target as stored."""
        hook = getattr(self.backend, "link_target", None)
        if hook is None or entry.type != "symlink":
            return entry
        with self._lock:  # the flag is the tree's: one resolution at a time
            if self._resolving:
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
                name = self._match(path, self._node(path), comp)
            except (NotFoundError, CorruptImageError):
                return None
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
            for entry in self.iterdir(directory.path):
                yield entry
                if entry.type != "dir":
                    continue
                try:
                    key = self.backend.key(self._node(entry.path))
                except CorruptImageError as e:
                    yield replace(entry, type="damaged", error=str(e))
                    continue
                if key is not None and key in ancestors:
                    yield replace(entry, type="damaged",
                                  error=f"{self.fs_type}: {entry.path} loops back to a parent directory; not followed")
                    continue
                if len(ancestors) > 512:
                    yield replace(entry, type="damaged", error=f"{entry.path}: directories nest deeper than 512")
                    continue
                yield from self._walk(entry, (*ancestors, key))
        except CorruptImageError as e:
            yield replace(directory, type="damaged", error=str(e))

    def layout(self, path: str, stream: str | None = None) -> Layout:
        """Where the file's bytes are; a run outside the volume (a hostile or damaged map) is a
        ``CorruptImageError`` naming the file, never a read past the source."""
        path = self.normalize(path)
        entry = self.stat(path)
        if entry.type == "dir" and stream is None:
            raise NotFoundError(f"{path} is a directory in the {self.fs_type} filesystem, not a file")
        if stream and stream not in entry.streams:
            raise NotFoundError(f"{path} has no stream {stream!r} in the {self.fs_type} filesystem")
        label = path + (f":{stream}" if stream else "")
        with self._guard(f"data of {label}"):
            layout = self.backend.layout(self._node(path), stream)
        check_runs(layout.runs or [], self.source.size, f"{self.fs_type}: {label}")
        return layout

    def open(self, path: str, stream: str | None = None) -> FileStream:
        """A stream over the file's data (or its NTFS alternate data stream ``stream``)."""
        label = self.normalize(path) + (f":{stream}" if stream else "")
        return FileStream(self, self.layout(path, stream), label)

    def data_runs(self, path: str, stream: str | None = None) -> RunList:
        """``(file_offset, disk_offset, length)`` of the file's data on the source; holes left out.

        Data stored inside metadata (NTFS resident, ext inline) or compressed has no plain runs: ``[]``.
        """
        return [(f, d, n) for f, d, n in self.layout(path, stream).runs or [] if d is not None]


def open_tree(source: BlockSource, subvolume: str | None = None) -> FileTree:
    """The file tree of the filesystem at offset 0 of ``source`` (Btrfs: of ``subvolume``, default: the
    default subvolume).

    Raises:
        UnsupportedError: no NTFS, ext2/3/4, FAT, exFAT, XFS or Btrfs filesystem there.
        UsageError: an LVM2 physical volume (a logical volume must be chosen), or ``subvolume`` on
            something other than Btrfs.
        CorruptImageError: the filesystem's root structures cannot be parsed.

    An MD RAID-1 member is read through its data area (the array); any other MD member is refused.
    """
    from . import detect

    info = detect(source)
    if info is None:
        raise UnsupportedError("no NTFS, ext2/3/4, FAT or exFAT filesystem found at offset 0, nor XFS or Btrfs "
                               "(whole disk? pick one with --partition N)")
    if info.type == "swap":
        raise UnsupportedError("this volume is Linux swap: it holds no files")
    if info.type == "md":  # a RAID-1 member holds the whole array: its filesystem is read there
        from .md import array_of

        array = array_of(source)
        assert array is not None
        return open_tree(array, subvolume)
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
            from .tree_ext import ExtBackend, recovered

            source, note = recovered(source)
            fh = BlockFile(source)
            backend = ExtBackend(fh, info.type)
            if note:
                backend.warnings.append(note)
        elif info.type == "xfs":
            from .tree_xfs import XfsBackend

            backend = XfsBackend(fh)
        elif info.type == "btrfs":
            from .tree_btrfs import BtrfsBackend

            backend = BtrfsBackend(fh, subvolume)
        elif info.type == "exfat":
            from .tree_exfat import ExfatBackend

            backend = ExfatBackend(fh)
        else:
            from .tree_fat import FatBackend

            backend = FatBackend(fh, info.type)
    except (Error, ImportError):  # a module left out of an installation is named by the CLI, not taken for damage
        raise
    except RecursionError:
        raise CorruptImageError(f"{info.type}: directory structure nests too deep (a loop?)") from None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptImageError(f"{info.type} filesystem: cannot open its root structures: {msg}") from None
    return FileTree(backend, source)
