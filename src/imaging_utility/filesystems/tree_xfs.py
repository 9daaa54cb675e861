"""XFS (v4 and v5) adapter of ``tree.FileTree`` over dissect.xfs.

Inodes, their extent lists (inline and B+tree) and symlinks come from dissect.xfs.  Directories
are parsed here (Linux ``fs/xfs/libxfs/xfs_da_format.h``: short-form directories in the inode,
``XD2B``/``XDB3`` single-block and ``XD2D``/``XDD3`` data blocks of ``sb_dirblklog``-sized
directory blocks) because dissect assumes directory blocks of one filesystem block and stops
silently at a broken entry, where a damaged directory must be named.  File data is mapped to
runs on the device: an unwritten (preallocated) extent reads as zeros, as XFS returns it.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from dissect.xfs import XFS
from dissect.xfs.xfs import INode, parse_fsblock

from ..blocks import BlockSource
from ..errors import CorruptImageError, Error, UnsupportedError
from . import xfs, xfs_attr
from .tree import KINDS, BlockFile, Entry, Layout
from .xfs_log import log_state

DIR_LEAF_OFFSET = 32 << 30  # XFS_DIR2_LEAF_OFFSET: directory blocks past this hold the hash index
DATA_MAGICS = {5: (b"XDB3", b"XDD3"), 4: (b"XD2B", b"XD2D")}
DATA_HEADER = {5: 64, 4: 16}
BLOCK_TAIL = struct.Struct(">II")  # count, stale (leaf entries of a single-block directory)
LEAF_ENTRY_SIZE = 8
FREE_TAG = 0xFFFF
FMT_LOCAL = 1
FMT_EXTENTS = 2
FMT_BTREE = 3
DIFLAG_REALTIME = 0x1
MAX_BLOCK = 1 << 16  # XFS_MAX_BLOCKSIZE: filesystem and directory blocks alike
DIFLAG2_NREXT64 = 1 << 4  # large extent counters: the attribute fork's count is di_big_anextents
BMAP_MAGICS = {4: b"BMAP", 5: b"BMA3"}
BMAP_HEADER = {4: 24, 5: 72}  # xfs_btree_lblock, without and with the v5 (CRC) fields
BMAP_MAX_LEVEL = 10  # above what any XFS extent tree can reach (XFS_BM_MAXLEVELS is 9 with 64-bit counts)
BMDR_HEADER = struct.Struct(">HH")  # level, numrecs of the root kept in the inode

Run = tuple[int, int | None, int]  # (file block, disk block or None for unwritten, blocks)


STALE = ("files are shown as last written in place, without the log's changes (a file changed, created or "
         "deleted since the last checkpoint may be missing, out of date or show other data); a kernel mount of a "
         "copy replays the log")


def _log_warnings(source: BlockSource) -> list[str]:
    """One line when the log may hold changes not yet written in place (the kernel replays them on mount;
    this reader does not)."""
    sb = xfs.probe(source)
    if sb is None:
        return []
    if not sb.logstart:
        return [f"xfs: its log is on an external device, not in this volume, so whether it holds changes cannot "
                f"be checked: {STALE}"]
    try:
        dirty = log_state(source, sb)
    except Error as e:
        dirty = f"its log cannot be read ({e})"
    return [] if dirty is None else [f"xfs: {dirty}: {STALE}"]


class XfsBackend:
    dot_entries = True
    case_insensitive = False
    fs_type = "xfs"

    def __init__(self, fh: BlockFile) -> None:
        self.fh = fh
        self.fs = XFS(fh)
        sb = self.fs.sb
        self.bs = int(sb.sb_blocksize)
        # xfs_validate_sb_common: blocks of 512 bytes to 64 KiB, directory blocks of at most 64 KiB
        if not 512 <= self.bs <= MAX_BLOCK or self.bs & (self.bs - 1) or self.bs << int(sb.sb_dirblklog) > MAX_BLOCK:
            raise CorruptImageError(f"xfs: the superblock claims {self.bs}-byte blocks and directory blocks of "
                                    f"2**{int(sb.sb_dirblklog)} of them")
        self.dir_bs = self.bs << int(sb.sb_dirblklog)
        self.version = 5 if self.fs.version == 5 else 4
        self.ftype = bool(self.fs._has_ftype)
        self.agblocks, self.agblklog, self.agcount = int(sb.sb_agblocks), int(sb.sb_agblklog), int(sb.sb_agcount)
        self.dblocks = int(sb.sb_dblocks)
        self.warnings = _log_warnings(fh.source)

    def root(self) -> INode:
        return self.load(int(self.fs.sb.sb_rootino))

    def label(self, node: INode) -> str:
        return f"inode {node.inum}"

    def key(self, node: INode) -> int | None:
        return int(node.inum)

    def load(self, ref: int) -> INode:
        node = self.fs.get_inode(ref)
        if node.inode.di_mode == 0:
            raise CorruptImageError(f"xfs: inode {ref} is not in use")
        return node

    # --- extents ----------------------------------------------------------------------------------
    def runs(self, node: INode) -> list[Run]:
        """The inode's data-fork extents as linear block runs, checked to lie inside the volume."""
        if int(node.inode.di_format) == FMT_BTREE:
            records = self._btree_records(node, node.datafork().read(), f"xfs inode {node.inum}: its extent B+tree")
        else:
            records = node._iter_blocks()
        return self._checked(node, records)

    def _checked(self, node: INode, records: Iterable[tuple[int, int, int, int]]) -> list[Run]:
        out: list[Run] = []
        mask = (1 << self.agblklog) - 1
        for offset, fsb, count, flag in records:
            agno, agbno = fsb >> self.agblklog, fsb & mask
            if agno >= self.agcount or agbno + count > self.agblocks or not count:
                raise CorruptImageError(f"xfs inode {node.inum}: extent at file block {offset} points to "
                                        f"AG {agno} block {agbno} (+{count}), outside the volume")
            if out and offset < out[-1][0] + out[-1][2]:
                raise CorruptImageError(f"xfs inode {node.inum}: extents overlap at file block {offset}")
            out.append((offset, None if flag else agno * self.agblocks + agbno, count))
        return out

    def _btree_records(self, node: INode, root: bytes, what: str) -> Iterator[tuple[int, int, int, int]]:
        """The extent records of a B+tree fork whose root is ``root``, walked here rather than by dissect:
        each block must have the right magic, sit one level below its parent, hold no more records than
        fit, and be reached once (a shared or looping block would repeat its subtree without end)."""
        if len(root) < BMDR_HEADER.size:
            raise CorruptImageError(f"{what} root is truncated")
        level, count = BMDR_HEADER.unpack_from(root)
        maxrecs = (len(root) - BMDR_HEADER.size) // 16
        if not 1 <= level <= BMAP_MAX_LEVEL or count > maxrecs:
            raise CorruptImageError(f"{what} root claims level {level} with {count} records")
        hdr, magic = BMAP_HEADER[self.version], BMAP_MAGICS[self.version]
        fit = (self.bs - hdr) // 16
        stack = [(ptr, level - 1) for ptr in reversed(struct.unpack_from(f">{count}Q", root, 4 + maxrecs * 8))]
        seen: set[int] = set()
        mask = (1 << self.agblklog) - 1
        while stack:
            fsb, lvl = stack.pop()
            agno, agbno = fsb >> self.agblklog, fsb & mask
            block = agno * self.agblocks + agbno
            if agno >= self.agcount or agbno >= self.agblocks or block in seen:
                why = "is reached twice" if block in seen else "is outside the volume"
                raise CorruptImageError(f"{what}: block {fsb} {why}")
            seen.add(block)
            buf = bytearray(self.bs)
            self.fh.source.readinto_at(block * self.bs, buf)
            got, blevel, n = struct.unpack_from(">4sHH", buf)
            if got != magic or blevel != lvl or n > fit:
                raise CorruptImageError(f"{what}: block {fsb} has magic {bytes(got)!r}, level {blevel} (expected "
                                        f"{lvl}) and {n} records")
            if lvl:
                ptrs = struct.unpack_from(f">{n}Q", buf, hdr + fit * 8)
                stack.extend((ptr, lvl - 1) for ptr in reversed(ptrs))
            else:
                for i in range(n):
                    yield parse_fsblock(bytes(buf[hdr + 16 * i : hdr + 16 * i + 16]))

    def _read(self, node: INode, runs: list[Run], file_off: int, length: int) -> bytes | None:
        """``length`` bytes at ``file_off`` of the file, or ``None`` when that range is not all mapped."""
        buf = bytearray(length)
        done = 0
        for start, disk, count in runs:
            lo, hi = start * self.bs, (start + count) * self.bs
            pos = file_off + done
            if hi <= pos or disk is None:
                continue
            if lo > pos:
                return None
            n = min(hi - pos, length - done)
            self.fh.source.readinto_at((disk * self.bs) + pos - lo, memoryview(buf)[done : done + n])
            done += n
            if done == length:
                return bytes(buf)
        return None

    # --- extended attributes ----------------------------------------------------------------------
    def xattrs(self, node: INode) -> list[tuple[str, bytes]]:
        """The attribute fork (``xfs_attr``): short-form in the inode, or blocks mapped like file data."""
        raw = node._buf.getvalue()
        what = f"xfs inode {node.inum}"
        forkoff, aformat = raw[0x52], raw[0x53]
        if not forkoff:
            return []
        fork = raw[(0xB0 if raw[4] == 3 else 0x64) + forkoff * 8 :]
        if aformat == FMT_LOCAL:
            return xfs_attr.listed(xfs_attr.shortform(fork, what), what)
        if aformat == FMT_BTREE:
            runs = self._checked(node, self._btree_records(node, fork, f"{what}: its attribute fork's B+tree"))
        elif aformat == FMT_EXTENTS:
            big = raw[4] == 3 and int.from_bytes(raw[0x78:0x80], "big") & DIFLAG2_NREXT64
            count = int.from_bytes(raw[0x4C:0x50], "big") if big else int.from_bytes(raw[0x50:0x52], "big")
            if count * 16 > len(fork):
                raise CorruptImageError(f"{what}: {count} attribute fork extents do not fit the inode")
            if not count:  # an attribute fork left empty (its attributes removed, or reserved for an inode)
                return []
            runs = self._checked(node, (parse_fsblock(fork[16 * i : 16 * i + 16]) for i in range(count)))
        else:
            raise CorruptImageError(f"{what}: attribute fork format {aformat}")

        def mapped(dablk: int) -> int | None:
            for start, disk, n in runs:
                if start <= dablk < start + n:
                    return None if disk is None else (disk + dablk - start) * self.bs
            return None

        def read(at: int, n: int) -> bytes:
            buf = bytearray(n)
            self.fh.source.readinto_at(at, buf)
            return bytes(buf)

        tree = xfs_attr.AttrTree(read, mapped, self.bs, self.version, what)
        return xfs_attr.listed(tree.attrs(), what)

    # --- directories ------------------------------------------------------------------------------
    def children(self, node: INode) -> list[tuple[str, Any]]:
        if stat.S_IFMT(node.inode.di_mode) != stat.S_IFDIR:
            raise CorruptImageError(f"xfs inode {node.inum} is not a directory")
        fmt = int(node.inode.di_format)
        if fmt == FMT_LOCAL:
            return self._shortform(node)
        if fmt not in (FMT_EXTENTS, FMT_BTREE):
            raise CorruptImageError(f"xfs directory inode {node.inum} has data fork format {fmt}")
        runs = self.runs(node)
        per = self.dir_bs // self.bs
        limit = DIR_LEAF_OFFSET // self.bs
        blocks: set[int] = set()
        for start, _disk, count in runs:
            if start < limit:
                span = range(start // per, (min(start + count, limit) - 1) // per + 1)
                if len(blocks) + len(span) > 1 << 20:
                    raise CorruptImageError(f"xfs directory inode {node.inum} claims over a million blocks")
                blocks.update(span)
        out: list[tuple[str, Any]] = []
        for db in sorted(blocks):
            data = self._read(node, runs, db * self.dir_bs, self.dir_bs)
            if data is None:
                continue  # a hole in the directory's data space
            out.extend(self._data_block(node, db, data))
        return out

    def _shortform(self, node: INode) -> list[tuple[str, Any]]:
        data = node.datafork().read()
        if len(data) < 6:
            raise CorruptImageError(f"xfs directory inode {node.inum}: short-form header truncated")
        count, i8 = data[0], data[1]
        isize = 8 if i8 else 4
        pos = 2 + isize
        out: list[tuple[str, Any]] = []
        for i in range(count or i8):
            if pos + 3 > len(data):
                raise CorruptImageError(f"xfs directory inode {node.inum}: short-form entry {i} truncated")
            namelen = data[pos]
            end = pos + 3 + namelen + (1 if self.ftype else 0) + isize
            if not namelen or end > len(data):
                raise CorruptImageError(f"xfs directory inode {node.inum}: short-form entry {i} is broken "
                                        f"(name length {namelen})")
            name = data[pos + 3 : pos + 3 + namelen]
            ino = int.from_bytes(data[end - isize : end], "big")
            out.append((name.decode("utf-8", "surrogateescape"), ino))
            pos = end
        return out

    def _data_block(self, node: INode, db: int, data: bytes) -> list[tuple[str, Any]]:
        where = f"xfs directory inode {node.inum}, directory block {db}"
        magic = data[:4]
        single, multi = DATA_MAGICS[self.version]
        if magic not in (single, multi):
            raise CorruptImageError(f"{where}: bad magic {magic!r}")
        end = len(data)
        if magic == single:
            count = BLOCK_TAIL.unpack_from(data, end - BLOCK_TAIL.size)[0]
            end -= BLOCK_TAIL.size + count * LEAF_ENTRY_SIZE
        pos = DATA_HEADER[self.version]
        if end < pos:
            raise CorruptImageError(f"{where}: {count} leaf entries do not fit the block")
        out: list[tuple[str, Any]] = []
        while pos < end:
            if int.from_bytes(data[pos : pos + 2], "big") == FREE_TAG:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                if length < 8 or length % 8 or pos + length > end:
                    raise CorruptImageError(f"{where}: free space at byte {pos} has length {length}")
                pos += length
                continue
            ino = int.from_bytes(data[pos : pos + 8], "big")
            namelen = data[pos + 8] if pos + 8 < end else 0
            size = (8 + 1 + namelen + (1 if self.ftype else 0) + 2 + 7) // 8 * 8
            if not namelen or pos + size > end:
                raise CorruptImageError(f"{where}: broken entry at byte {pos} (name length {namelen})")
            out.append((data[pos + 9 : pos + 9 + namelen].decode("utf-8", "surrogateescape"), ino))
            pos += size
        return out

    # --- entries and data -------------------------------------------------------------------------
    def describe(self, node: INode, name: str, path: str) -> Entry:
        mode = int(node.inode.di_mode)
        kind = KINDS.get(stat.S_IFMT(mode), "other")
        target = None
        if kind == "symlink":
            if node.size > 1024:
                raise CorruptImageError(f"xfs symlink inode {node.inum} claims {node.size} bytes")
            target = node.link
        rdev = None
        if kind in ("char", "block"):
            # the data fork holds xfs_dev_t: 14 bits of major, 18 of minor, big-endian (xfs_dinode_get_rdev)
            dev = int.from_bytes(node.datafork().read(4).ljust(4, b"\0"), "big")
            rdev = os.makedev((dev >> 18) & 0x1FF, dev & 0x3FFFF)
        return Entry(name=name, path=path, type=kind, size=int(node.size) if kind in ("file", "symlink") else 0,
                     mtime_ns=int(node.mtime_ns), mode=stat.S_IMODE(mode), target=target, inode=int(node.inum),
                     nlink=int(node.inode.di_nlink), uid=int(node.inode.di_uid), gid=int(node.inode.di_gid),
                     atime_ns=int(node.atime_ns), rdev=rdev)

    def layout(self, node: INode, stream: str | None) -> Layout:
        size = int(node.size)
        fmt = int(node.inode.di_format)
        if not size:
            return Layout(0, [])
        if node.inode.di_flags & DIFLAG_REALTIME:
            raise UnsupportedError(f"xfs inode {node.inum}: its data is on the realtime device (not in this volume)")
        if fmt == FMT_LOCAL:
            return Layout(size, None, node.open)
        if fmt not in (FMT_EXTENTS, FMT_BTREE):
            raise CorruptImageError(f"xfs inode {node.inum} has data fork format {fmt}")
        out: list[tuple[int, int | None, int]] = []
        pos = 0
        for start, disk, count in self.runs(node):
            off = start * self.bs
            if off >= size:
                break
            if off > pos:
                out.append((pos, None, off - pos))
            length = min(count * self.bs, size - off)
            out.append((off, None if disk is None else disk * self.bs, length))
            pos = off + length
        if pos < size:
            out.append((pos, None, size - pos))
        return Layout(size, out)

