"""ext2/3/4 adapter of ``tree.FileTree`` over dissect.extfs.

Inodes, extents and block maps come from dissect.extfs; directory blocks are parsed here
(``ext4_dir_entry_2``: inode u32, rec_len u16, name_len u8, file_type u8, name — Linux
``Documentation/filesystems/ext4/directory.rst``) because dissect stops silently at a broken
entry, where we must say which directory is damaged and where.  Names are decoded as UTF-8 with
``surrogateescape``, so any byte sequence round-trips.
"""

from __future__ import annotations

import stat
import struct
from typing import Any

from dissect.extfs import ExtFS
from dissect.extfs.c_ext import c_ext
from dissect.extfs.extfs import INode

from ..errors import CorruptImageError
from . import ext_meta
from .tree import KINDS, BlockFile, Entry, Layout, runs_from_clusters

DIRENT = struct.Struct("<IHBB")
ROOT_INO = 2
EXT4_INLINE_DATA_FL = 0x10000000
FAST_SYMLINK_MAX = 60


class ExtBackend:
    dot_entries = True
    case_insensitive = False

    def __init__(self, fh: BlockFile, kind: str) -> None:
        self.fs = ExtFS(fh)
        self.fs_type = kind

    def root(self) -> INode:
        return self.fs.get_inode(ROOT_INO)

    def label(self, node: INode) -> str:
        return f"inode {node.inum}"

    def children(self, node: INode) -> list[tuple[str, Any]]:
        data = node.open().read(node.size)
        if len(data) != node.size:
            raise CorruptImageError(f"directory inode {node.inum} holds {len(data)} of {node.size} bytes")
        block = self.fs.block_size if not node.inode.i_flags & EXT4_INLINE_DATA_FL else max(len(data), 1)
        out: list[tuple[str, Any]] = []
        off = 0
        count = self.fs.sb.s_inodes_count
        while off + DIRENT.size <= len(data):
            ino, rec_len, name_len, _ftype = DIRENT.unpack_from(data, off)
            block_end = (off // block + 1) * block
            if rec_len < DIRENT.size or rec_len % 4 or off + rec_len > block_end or DIRENT.size + name_len > rec_len:
                raise CorruptImageError(f"directory inode {node.inum}: broken entry at byte {off} "
                                        f"(rec_len {rec_len}, name_len {name_len})")
            if ino:
                if ino > count:
                    raise CorruptImageError(f"directory inode {node.inum}: entry at byte {off} names inode {ino}, "
                                            f"beyond the last inode {count}")
                raw = data[off + DIRENT.size : off + DIRENT.size + name_len]
                out.append((raw.decode("utf-8", "surrogateescape"), ino))
            off += rec_len
        return out

    def load(self, ref: int) -> INode:
        node = self.fs.get_inode(ref)
        if node.inode.i_mode == 0 and node.inode.i_links_count == 0:
            raise CorruptImageError(f"{self.fs_type}: inode {ref} is not in use (zeroed or deleted)")
        return node

    def key(self, node: INode) -> int | None:
        return int(node.inum)

    def describe(self, node: INode, name: str, path: str) -> Entry:
        mode = int(node.inode.i_mode)
        kind = KINDS.get(stat.S_IFMT(mode), "other")
        target = None
        if kind == "symlink":
            target = self._read_all(node).decode("utf-8", "surrogateescape")
        uid, gid = ext_meta.owner(node)
        return Entry(name=name, path=path, type=kind, size=int(node.size) if kind in ("file", "symlink") else 0,
                     mtime_ns=int(node.mtime_ns), mode=stat.S_IMODE(mode), target=target, inode=int(node.inum),
                     nlink=int(node.inode.i_links_count), uid=uid, gid=gid, atime_ns=int(node.atime_ns),
                     rdev=ext_meta.device(node) if kind in ("char", "block") else None)

    def xattrs(self, node: INode) -> list[tuple[str, bytes]]:
        return ext_meta.xattrs(self.fs, node)

    def _read_all(self, node: INode) -> bytes:
        if node.size > 65536:
            raise CorruptImageError(f"symlink inode {node.inum} claims {node.size} bytes")
        data = bytes(node.open().read(node.size))
        return data

    def layout(self, node: INode, stream: str | None) -> Layout:
        size = int(node.size)
        inline = node.inode.i_flags & EXT4_INLINE_DATA_FL
        if inline or (stat.S_ISLNK(node.inode.i_mode) and size < FAST_SYMLINK_MAX) or not size:
            return Layout(size, None, node.open) if size else Layout(0, [])
        runs: list[tuple[int | None, int]] = list(node.dataruns())
        if not node.inode.i_flags & c_ext.EXT4_EXTENTS_FL:
            runs = [(None if b == 0 else b, n) for b, n in runs]  # block 0 in a block map is a hole
        return Layout(size, runs_from_clusters(runs, self.fs.block_size, 0, size, f"{self.fs_type} inode {node.inum}"))
