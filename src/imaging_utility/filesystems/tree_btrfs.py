"""Btrfs (one device) adapter of ``tree.FileTree`` over dissect.btrfs, one subvolume at a time.

dissect.btrfs reads inodes, directories and symlinks.  Before it is
trusted, the chunk tree and the root tree are walked with our own checked reader (``btrfs.py``:
checksums, addresses, levels, loops), every tree block dissect reads afterwards is checked the
same way, and its cursors may only descend (a child pointing back up is a loop, not a hang).

Plain data (uncompressed, not inline) is mapped to device runs through the chunk map and read
with ``readinto_at``; a preallocated extent reads as zeros.  Inline and compressed data are decoded
by ``btrfs_extent`` with every claimed size bounded (dissect's decoders expand a stream as far as it
goes).  Subvolumes nested in the one opened
appear as directories; their entries' inode numbers are shown as ``subvolume id << 48 | inode``
so that they stay distinct from the opened subvolume's own.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

from dissect.btrfs import Btrfs
from dissect.btrfs.btrfs import INode, Subvolume
from dissect.btrfs.c_btrfs import c_btrfs
from dissect.btrfs.tree import BTree, Cursor

from ..blocks import BlockSource
from ..errors import EXIT_CORRUPT, CorruptImageError, Error, NotFoundError, UnsupportedError
from . import btrfs
from . import c_btrfs as c
from .btrfs_csum import CSUM_TREE, DataSums
from .btrfs_extent import COMPRESS_ZSTD, ExtentFile, Piece, check_compressed
from .tree import KINDS, BlockFile, Entry, Layout

MAX_DEPTH = c.MAX_LEVEL + 1
NODATASUM = 1 << 0  # BTRFS_INODE_NODATASUM
F = TypeVar("F", bound=Callable[..., Any])


class _TreeDamage(Error):
    """A damaged tree block met inside a dissect cursor.  Not a ``ValueError`` (as ``CorruptImageError``
    is): dissect's cursors take ``ValueError`` for "no more items", so a damaged leaf would end a
    directory listing or a file's extent list early, and silently.  The backend's methods turn it back
    into ``CorruptImageError``."""

    exit_code = EXIT_CORRUPT


def _surfaced(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _TreeDamage as e:
            raise CorruptImageError(str(e)) from None

    return cast(F, wrapper)


def _plain(e: Exception) -> str:
    """An allocation-map message without its advice about --used-only."""
    return str(e).split("; image it in full")[0].replace("Btrfs superblock found but ", "btrfs: ")


class _CheckedCursor(Cursor):  # type: ignore[misc]
    """A cursor that refuses to descend to a node that is not below the one it is in, and to step to an
    item whose key is not above the last one's (a block shared by two parents would repeat its items,
    and a chain of such blocks repeats them without end)."""

    def next(self) -> None:
        key = self.item().key
        before = (key.objectid, key.type, key.offset)
        super().next()
        key = self.item().key
        if (key.objectid, key.type, key.offset) <= before:
            raise _TreeDamage(f"btrfs: tree keys go back from {before} to "
                                    f"{(key.objectid, key.type, key.offset)}: a shared or looping tree block")

    def push(self, address: int, initial_index: int = 0) -> None:
        parent = self._header
        super().push(address, initial_index)
        header = self._header
        if parent is not None and (header.level >= parent.level or len(self._path) > MAX_DEPTH):
            self.pop()
            raise _TreeDamage(f"btrfs: the tree block at logical {address:#x} (level {header.level}) is not "
                                    f"below its parent (level {parent.level}): a loop")
        # as the kernel's btrfs_check_node/leaf: a node holds 1 to as many pointers as fit, a leaf as many
        # items as fit and none only as a tree's root (dissect's binary search never ends on an empty block)
        room = (len(self._node) - len(c_btrfs.btrfs_header)) // len(
            c_btrfs.btrfs_key_ptr if header.level else c_btrfs.btrfs_item)
        if header.nritems > room or (not header.nritems and (header.level or parent is not None)):
            count = header.nritems
            self.pop()
            raise _TreeDamage(f"btrfs: the tree block at logical {address:#x} (level {header.level}) claims "
                                    f"{count} items (it has room for {room})")

    def search(self, objectid: int | None = None, type: int | None = None, offset: int | None = None) -> bool:
        if self._header is not None and not self._header.nritems:  # an empty tree: its root leaf holds nothing
            self._index = None
            return False
        return bool(super().search(objectid, type, offset))


def _checked(tree: BTree) -> BTree:
    tree.cursor = lambda: _CheckedCursor(tree)
    return tree


class _EmptyDir:
    """Where a snapshot holds a nested subvolume of its source: an empty directory, as the kernel shows it."""

    def __init__(self, objectid: int) -> None:
        self.objectid = objectid
        self.inum = 2  # BTRFS_EMPTY_SUBVOL_DIR_OBJECTID

    def iterdir(self) -> list[tuple[str, Any]]:
        return []


class BtrfsBackend:
    dot_entries = True
    case_insensitive = False
    fs_type = "btrfs"

    def __init__(self, fh: BlockFile, subvolume: str | None = None) -> None:
        source: BlockSource = fh.source
        sb = btrfs.probe(source)
        if sb is None:
            raise CorruptImageError("btrfs: no superblock at offset 0x10000")
        try:
            btrfs.check_supported(sb)
        except UnsupportedError as e:  # readable, but not by this reader: not damage
            raise UnsupportedError(_plain(e)) from None
        try:
            self.chunks = btrfs.read_chunks(source, sb)
            self.reader = btrfs.Reader(source, sb, self.chunks)
            roots = btrfs.tree_roots(self.reader, sb, {CSUM_TREE})  # the root tree is sound before dissect walks it
            self.sums = DataSums.open(source, self.reader, self.chunks, roots.get(CSUM_TREE))
        except UnsupportedError as e:
            raise CorruptImageError(_plain(e)) from None
        self.source = source
        self.sectorsize = sb.sectorsize
        self.warnings = [] if not sb.log_root else [
            f"btrfs: it holds a log tree (not cleanly unmounted after an fsync): what was fsynced after the last "
            f"commit (generation {sb.generation}) is not replayed, and files are shown as of that commit; a kernel "
            "mount of a copy replays the log"]
        self.fs = Btrfs(fh)
        self.fs._read_node = self._read_node
        self.fs._root_tree = _checked(self.fs._root_tree)
        open_tree = self.fs._open_tree
        self.fs._open_tree = lambda objectid: _checked(open_tree(objectid))
        _checked(self.fs.default_subvolume.tree)  # opened by Btrfs() itself, before the lines above
        self.subvolume = self._select(subvolume)

    def _read_node(self, logical: int) -> bytes:
        try:
            return bytes(self.reader.node(logical, None, None))
        except UnsupportedError as e:
            raise _TreeDamage(_plain(e)) from None

    def _physical(self, node: INode, logical: int, length: int) -> int:
        try:
            chunk = self.chunks.find(logical, length)
        except UnsupportedError:
            raise CorruptImageError(f"btrfs {self.label(node)}: a data extent at logical {logical:#x} "
                                    "lies outside every chunk") from None
        return chunk.stripes[0] + logical - chunk.logical

    @_surfaced
    def _select(self, name: str | None) -> Subvolume:
        if name is None:
            return self.fs.default_subvolume
        wanted = name.strip().strip("/")
        listing: list[str] = []
        for sv in self.fs.subvolumes():
            path = sv.path or ""
            if wanted in (str(sv.objectid), path) or (not wanted and sv.objectid == c.FS_TREE):
                sv.tree  # noqa: B018 - opens (and checks) it now
                return sv
            listing.append(f"{sv.objectid} ({path or 'top level'})")
        raise NotFoundError(f"btrfs subvolume {name!r} not found (subvolumes: {', '.join(listing)})")

    @_surfaced
    def root(self) -> INode:
        return self.subvolume.root

    def label(self, node: INode | _EmptyDir) -> str:
        if isinstance(node, _EmptyDir):
            return f"the place of subvolume {node.objectid}"
        return f"inode {node.inum} of subvolume {node.subvolume.objectid}"

    def key(self, node: INode | _EmptyDir) -> int | None:
        if isinstance(node, _EmptyDir):
            return None
        return int(node.subvolume.objectid) << 64 | int(node.inum)

    @_surfaced
    def load(self, ref: INode | _EmptyDir) -> INode | _EmptyDir:
        if isinstance(ref, INode):
            ref.inode  # noqa: B018 - reads (and checks) the inode item
        return ref

    @_surfaced
    def children(self, node: INode | _EmptyDir) -> list[tuple[str, Any]]:
        if isinstance(node, _EmptyDir):
            return []
        out: list[tuple[str, Any]] = []
        for name, child in node.iterdir():
            nested = name not in (".", "..") and child.subvolume is not node.subvolume
            if nested and not self._mounted_here(node, child):
                child = _EmptyDir(child.subvolume.objectid)
            out.append((name, child))
        return out

    def _mounted_here(self, parent: INode, root: INode) -> bool:
        """Is subvolume ``root`` really attached at this directory?  A snapshot copies its source's entries
        for nested subvolumes, but those stay attached to the source: the kernel shows an empty directory."""
        try:
            _, data = self.fs._root_tree.find(parent.subvolume.objectid, c_btrfs.BTRFS_ROOT_REF_KEY,
                                              root.subvolume.objectid)
        except KeyError:
            return False
        return bool(int.from_bytes(bytes(data[:8]), "little") == parent.inum)

    @_surfaced
    def describe(self, node: INode | _EmptyDir, name: str, path: str) -> Entry:
        if isinstance(node, _EmptyDir):
            return Entry(name=name, path=path, type="dir", mode=0o755, inode=node.objectid << 48 | 2)
        mode = int(node.inode.mode)
        kind = KINDS.get(stat.S_IFMT(mode), "other")
        target = None
        if kind == "symlink":
            if node.size > 4096:
                raise CorruptImageError(f"btrfs symlink {self.label(node)} claims {node.size} bytes")
            target = node.link
        inum = int(node.inum)
        if node.subvolume.objectid != self.subvolume.objectid:
            inum |= int(node.subvolume.objectid) << 48
        rdev = None
        if kind in ("char", "block"):  # the kernel's dev_t as it was: 12 bits of major above 20 of minor
            dev = int(node.inode.rdev)
            rdev = os.makedev((dev >> 20) & 0xFFF, dev & 0xFFFFF)
        return Entry(name=name, path=path, type=kind, size=int(node.size) if kind in ("file", "symlink") else 0,
                     mtime_ns=int(node.mtime_ns), mode=stat.S_IMODE(mode), target=target, inode=inum,
                     nlink=int(node.inode.nlink), uid=int(node.inode.uid), gid=int(node.inode.gid),
                     atime_ns=int(node.atime_ns), rdev=rdev)

    @_surfaced
    def xattrs(self, node: INode | _EmptyDir) -> list[tuple[str, bytes]]:
        """The inode's XATTR_ITEMs under the names Linux lists (Btrfs keeps the full name, ``user.x``, and
        POSIX ACLs in the kernel's own ``system.posix_acl_*`` format); names that hash alike share an item."""
        if isinstance(node, _EmptyDir):
            return []
        what = f"btrfs {self.label(node)}: an extended attribute item"
        out: list[tuple[str, bytes]] = []
        cursor = node.subvolume.tree.cursor()
        for _item, data in cursor.iter(node.inum, c_btrfs.BTRFS_XATTR_ITEM_KEY, 0, ignore_offset=True):
            data = bytes(data)
            pos = 0
            while pos < len(data):
                if pos + c.DIR_ITEM.size > len(data):
                    raise CorruptImageError(f"{what} is truncated at byte {pos}")
                value_len, name_len = c.DIR_ITEM.unpack_from(data, pos)
                start = pos + c.DIR_ITEM.size
                end = start + name_len + value_len
                if not name_len or end > len(data):
                    raise CorruptImageError(f"{what} claims a {name_len}-byte name and a {value_len}-byte value "
                                            f"past its end")
                name = data[start : start + name_len].decode("utf-8", "surrogateescape")
                out.append((name, data[start + name_len : end]))
                pos = end
        return out

    @_surfaced
    def layout(self, node: INode, stream: str | None) -> Layout:
        size = int(node.size)
        if not size:
            return Layout(0, [])
        what = f"btrfs {self.label(node)}"
        runs: list[tuple[int, int | None, int]] = []
        pieces: list[Piece] = []
        pos = 0
        cursor = node.subvolume.tree.cursor()
        for item, data in cursor.iter(node.inum, c_btrfs.BTRFS_EXTENT_DATA_KEY, 0, ignore_offset=True):
            data = bytes(data)
            if len(data) < c.FILE_EXTENT.size:
                raise CorruptImageError(f"{what}: a file extent item of {len(data)} bytes")
            _, ram_bytes, compression, encryption, other, etype = c.FILE_EXTENT.unpack_from(data)
            start = int(item.key.offset)
            if start < pos:
                raise CorruptImageError(f"{what}: file extents overlap at byte {start}")
            if start >= size:
                break
            if encryption or other or compression > COMPRESS_ZSTD or etype > c.FILE_EXTENT_PREALLOC:
                raise CorruptImageError(f"{what}: a file extent of type {etype}, compression {compression}, "
                                        f"encoding {encryption}/{other}")
            if etype == c.FILE_EXTENT_INLINE:
                ram = ram_bytes if compression else len(data) - c.FILE_EXTENT.size
                length = min(ram, size - start)
                pieces.append(Piece(start, length, compression=compression, ram_bytes=ram,
                                    data=data[c.FILE_EXTENT.size :]))
                pos = start + length
                continue
            if len(data) < c.FILE_EXTENT.size + c.FILE_EXTENT_REG.size:
                raise CorruptImageError(f"{what}: a file extent item of {len(data)} bytes")
            disk, disk_length, offset, length = c.FILE_EXTENT_REG.unpack_from(data, c.FILE_EXTENT.size)
            length = min(length, size - start)
            if start > pos:
                runs.append((pos, None, start - pos))
            if not disk or etype != c.FILE_EXTENT_REGULAR:
                runs.append((start, None, length))
                pieces.append(Piece(start, length))
            elif compression:
                check_compressed(disk_length, ram_bytes, offset, length, what)
                where = self._physical(node, disk, disk_length)
                pieces.append(Piece(start, length, where, disk_length, compression, ram_bytes, offset))
            else:
                where = self._physical(node, disk + offset, length)
                runs.append((start, where, length))
                pieces.append(Piece(start, length, where))
            pos = start + length
        nodatasum = int(node.inode.flags) & NODATASUM  # the kernel neither writes nor checks their checksums
        check = None if self.sums is None or nodatasum else functools.partial(self.sums.check, what)
        if any(p.data is not None or p.compression for p in pieces):
            sector = self.sectorsize
            return Layout(size, None,
                          lambda: cast(IO[bytes], ExtentFile(self.source, size, pieces, sector, what, check)))
        if pos < size:
            runs.append((pos, None, size - pos))
        return Layout(size, runs, check=check)
