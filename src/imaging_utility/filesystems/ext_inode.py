"""ext2/3/4 file data without trusting what an inode claims: raw inodes, extent trees, block maps,
inline data and directory entries, read through ``BlockSource.readinto_at``.

Spec: Linux ``Documentation/filesystems/ext4/{inodes,ifork,directory,inlinedata,attributes}.rst``;
structures in ``c_ext.py``.  Everything an inode or a directory says is a claim and is checked
against the volume before it is used:

- a run of blocks must lie inside the volume (``blocks_count``); extents must come in ascending,
  non-overlapping logical order; an extent tree is at most 5 levels deep and visits each tree
  block once; a file may not map more blocks than the volume holds.  A violation is a
  ``CorruptImageError`` naming the inode, so that one file is reported and the rest goes on;
- a directory is read block by block from the blocks really mapped (holes are skipped, as the
  kernel's readdir does), so a size of 8 GiB claimed by a one-block directory costs one block;
- inline data (``EXT4_INLINE_DATA_FL``) is ``i_block`` plus the ``system.data`` extended
  attribute in the inode's extra space, for files, symlinks and directories alike.

Thread-safe: no state but the read-only group table; reads are positional.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator

from ..blocks import BlockSource
from ..errors import CorruptImageError
from . import c_ext as c
from .ext import ExtSuper, GroupTable, _read_groups

__all__ = ["ExtVolume"]

Run = tuple[int | None, int]  # (physical block or None for a hole, count), in file order


class ExtVolume:
    """Inodes and file data of one ext volume."""

    def __init__(self, source: BlockSource, sb: ExtSuper) -> None:
        self.source = source
        self.sb = sb
        self.block_size = sb.block_size
        self.groups: GroupTable = _read_groups(source, sb)

    # --- inodes -------------------------------------------------------------------------------
    def raw_inode(self, ino: int) -> bytes:
        """The ``s_inode_size`` bytes of inode ``ino``."""
        sb = self.sb
        if not 1 <= ino <= sb.inodes_count:
            raise CorruptImageError(f"{sb.kind}: inode {ino} is outside 1..{sb.inodes_count}")
        group, index = divmod(ino - 1, sb.inodes_per_group)
        if group >= len(self.groups.inode_table):
            raise CorruptImageError(f"{sb.kind}: inode {ino} lies in group {group}, past the last group")
        offset = self.groups.inode_table[group] * self.block_size + index * sb.inode_size
        if offset + sb.inode_size > self.source.size:
            raise CorruptImageError(f"{sb.kind}: inode {ino} at offset {offset:#x} lies past the end of the volume")
        buf = bytearray(sb.inode_size)
        self.source.readinto_at(offset, buf)
        return bytes(buf)

    @staticmethod
    def size_of(raw: bytes) -> int:
        return int(c.INODE_SIZE_LO.unpack_from(raw, 0x04)[0]) | int(c.INODE_SIZE_LO.unpack_from(raw, 0x6C)[0]) << 32

    @staticmethod
    def flags_of(raw: bytes) -> int:
        return int(c.INODE_FLAGS.unpack_from(raw, 0x20)[0])

    # --- inline data --------------------------------------------------------------------------
    def system_data(self, raw: bytes, ino: int) -> bytes:
        """The value of the in-inode ``system.data`` attribute (the rest of an inline file), or b""."""
        if len(raw) <= 128 + 2:
            return b""
        extra = c.INODE_EXTRA_ISIZE.unpack_from(raw, 0x80)[0]
        start = 128 + extra
        if extra % 4 or start + 4 > len(raw) or int.from_bytes(raw[start : start + 4], "little") != c.XATTR_MAGIC:
            return b""
        first = start + 4  # values are relative to the first entry
        pos = first
        while pos + c.XATTR_ENTRY.size <= len(raw):
            name_len, index, value_offs, value_inum, value_size, _ = c.XATTR_ENTRY.unpack_from(raw, pos)
            if name_len == 0 and index == 0 and value_offs == 0:
                break
            name = raw[pos + c.XATTR_ENTRY.size : pos + c.XATTR_ENTRY.size + name_len]
            if index == c.XATTR_INDEX_SYSTEM and name == b"data":
                if value_inum:
                    raise CorruptImageError(f"{self.sb.kind}: inode {ino}: system.data lives in inode "
                                            f"{value_inum}, which inline data never does")
                if first + value_offs + value_size > len(raw):
                    raise CorruptImageError(f"{self.sb.kind}: inode {ino}: system.data value overflows the inode")
                return raw[first + value_offs : first + value_offs + value_size]
            pos += (c.XATTR_ENTRY.size + name_len + c.XATTR_ROUND - 1) & ~(c.XATTR_ROUND - 1)
        return b""

    def inline_data(self, raw: bytes, ino: int) -> bytes:
        """An inline file's or symlink's bytes: ``i_block`` then ``system.data``, cut at ``i_size``."""
        size = self.size_of(raw)
        data = raw[c.INODE_BLOCK_OFFSET : c.INODE_BLOCK_OFFSET + c.INODE_BLOCK_SIZE] + self.system_data(raw, ino)
        if size > len(data):
            raise CorruptImageError(f"{self.sb.kind}: inode {ino} holds {len(data)} bytes of inline data "
                                    f"but its size is {size}")
        return data[:size]

    # --- block mapping ------------------------------------------------------------------------
    def runs(self, raw: bytes, ino: int) -> list[Run]:
        """``(physical block or None, count)`` runs covering the file's first ``ceil(size / block)``
        blocks (a trailing hole included), from its extent tree or block map."""
        blocks = -(-self.size_of(raw) // self.block_size)
        iblock = raw[c.INODE_BLOCK_OFFSET : c.INODE_BLOCK_OFFSET + c.INODE_BLOCK_SIZE]
        if self.flags_of(raw) & c.EXT4_EXTENTS_FL:
            out = _Extents(self, ino, blocks).walk(iblock)
        else:
            out = _BlockMap(self, ino, blocks).walk(iblock)
        mapped = sum(n for _, n in out)
        if mapped < blocks:
            out.append((None, blocks - mapped))
        return out

    def label(self, ino: int) -> str:
        return f"{self.sb.kind} inode {ino}"

    def check_run(self, ino: int, start: int, count: int, what: str) -> None:
        if start < self.sb.first_data_block or start + count > self.sb.blocks_count:
            raise CorruptImageError(f"{self.label(ino)}: {what} at block {start} (+{count}) lies outside the "
                                    f"volume's {self.sb.blocks_count} blocks")

    def read_block(self, block: int) -> bytes:
        buf = bytearray(self.block_size)
        self.source.readinto_at(block * self.block_size, buf)
        return bytes(buf)

    # --- directories --------------------------------------------------------------------------
    def entries(self, raw: bytes, ino: int) -> Iterator[tuple[bytes, int]]:
        """``(name, inode)`` of each entry in on-disk order, block by block; the directory's own
        ``.`` and ``..`` (the first two entries) left out."""
        if self.flags_of(raw) & c.EXT4_INLINE_DATA_FL:
            iblock = raw[c.INODE_BLOCK_OFFSET : c.INODE_BLOCK_OFFSET + c.INODE_BLOCK_SIZE]
            # i_block starts with the parent's inode number (the implicit ".."), then entries
            yield from self._block_entries(iblock[4:], ino, 4, 2)
            yield from self._block_entries(self.system_data(raw, ino), ino, c.INODE_BLOCK_SIZE, 2)
            return
        skip = 0
        logical = 0
        for start, count in self.runs(raw, ino):
            if start is None:
                logical += count
                continue
            for k in range(count):
                data = self.read_block(start + k)
                yield from self._block_entries(data, ino, (logical + k) * self.block_size, skip)
                skip = 2
            logical += count

    def _block_entries(self, data: bytes, ino: int, where: int, skip: int) -> Iterator[tuple[bytes, int]]:
        """Entries of one directory block (or inline area); ``skip`` < 2 while the dots may come."""
        off = 0
        index = skip
        while off + c.DIRENT.size <= len(data):
            child, rec_len, name_len, _ftype = c.DIRENT.unpack_from(data, off)
            if (rec_len < c.DIRENT.size or rec_len % 4 or off + rec_len > len(data)
                    or c.DIRENT.size + name_len > rec_len):
                raise CorruptImageError(f"directory {self.label(ino)}: broken entry at byte {where + off} "
                                        f"(rec_len {rec_len}, name_len {name_len})")
            if child:
                if child > self.sb.inodes_count:
                    raise CorruptImageError(f"directory {self.label(ino)}: entry at byte {where + off} names "
                                            f"inode {child}, beyond the last inode {self.sb.inodes_count}")
                name = data[off + c.DIRENT.size : off + c.DIRENT.size + name_len]
                dot = (index == 0 and name == b".") or (index == 1 and name == b"..")
                if not dot:
                    yield name, child
            if index < 2:
                index += 1
            off += rec_len


class _Extents:
    """An extent tree walked with its claims checked (see the module docstring)."""

    def __init__(self, vol: ExtVolume, ino: int, blocks: int) -> None:
        self.vol, self.ino, self.blocks = vol, ino, blocks
        self.out: list[Run] = []
        self.next = 0  # the next logical block expected
        self.mapped = 0
        self.visited: set[int] = set()

    def walk(self, root: bytes) -> list[Run]:
        self._node(root, None, "i_block")
        return self.out

    def _node(self, data: bytes, depth: int | None, where: str) -> None:
        label = self.vol.label(self.ino)
        magic, entries, _max, node_depth, _ = c.EXTENT_HEADER.unpack_from(data)
        if magic != c.EXTENT_MAGIC:
            raise CorruptImageError(f"{label}: extent header in {where} has magic {magic:#06x}, not 0xf30a")
        if node_depth > c.EXTENT_MAX_DEPTH or (depth is not None and node_depth != depth):
            raise CorruptImageError(f"{label}: extent node in {where} has depth {node_depth}"
                                    + (f", expected {depth}" if depth is not None else ""))
        if c.EXTENT_HEADER.size + 12 * entries > len(data):
            raise CorruptImageError(f"{label}: extent node in {where} claims {entries} entries, "
                                    f"more than it can hold")
        for i in range(entries):
            pos = c.EXTENT_HEADER.size + 12 * i
            if node_depth == 0:
                self._leaf(*c.EXTENT_LEAF.unpack_from(data, pos))
                continue
            _first, leaf_lo, leaf_hi = c.EXTENT_INDEX.unpack_from(data, pos)
            child = leaf_lo | leaf_hi << 32
            self.vol.check_run(self.ino, child, 1, "an extent index block")
            if child in self.visited:
                raise CorruptImageError(f"{label}: extent tree visits block {child} twice (a loop?)")
            self.visited.add(child)
            self._node(self.vol.read_block(child), node_depth - 1, f"block {child}")

    def _leaf(self, first: int, length: int, start_hi: int, start_lo: int) -> None:
        if first >= self.blocks:
            return  # past the file's size (preallocated): never read
        uninit = length > c.EXTENT_INIT_MAX_LEN
        count = length - c.EXTENT_INIT_MAX_LEN if uninit else length
        start = start_lo | start_hi << 32
        label = self.vol.label(self.ino)
        if count == 0 or first < self.next:
            raise CorruptImageError(f"{label}: extent at logical block {first} (+{count}) overlaps or "
                                    f"precedes the one before it")
        self.vol.check_run(self.ino, start, count, "an extent")
        self.mapped += count
        if self.mapped > self.vol.sb.blocks_count:
            raise CorruptImageError(f"{label}: maps more blocks than the volume holds")
        if first > self.next:
            self.out.append((None, first - self.next))
        count = min(count, self.blocks - first)
        self.out.append((None, count) if uninit else (start, count))  # unwritten: reads as zeros
        self.next = first + count


class _BlockMap:
    """The ext2/3 block map: 12 direct pointers, then single, double and triple indirect blocks.
    A zero pointer is a hole, as large as everything below it; nothing is expanded for it."""

    def __init__(self, vol: ExtVolume, ino: int, blocks: int) -> None:
        self.vol, self.ino, self.blocks = vol, ino, blocks
        self.per_block = vol.block_size // 4
        self.out: list[Run] = []
        self.pos = 0  # logical blocks covered so far
        self.mapped = 0
        self.reads = 0

    def walk(self, iblock: bytes) -> list[Run]:
        pointers = struct.unpack("<15I", iblock)
        for p in pointers[: c.N_DIRECT]:
            self._add(p, 1)
        for level, p in enumerate(pointers[c.N_DIRECT :], start=1):
            self._indirect(p, level)
        return self.out

    def _add(self, block: int, count: int) -> None:
        count = min(count, self.blocks - self.pos)
        if count <= 0:
            return
        if block:
            self.vol.check_run(self.ino, block, count, "a block pointer")
            self.mapped += count
            if self.mapped > self.vol.sb.blocks_count:
                raise CorruptImageError(f"{self.vol.label(self.ino)}: maps more blocks than the volume holds")
        last = self.out[-1] if self.out else None
        if last is not None and last[0] is None and not block:
            self.out[-1] = (None, last[1] + count)
        elif last is not None and last[0] is not None and block and last[0] + last[1] == block:
            self.out[-1] = (last[0], last[1] + count)
        else:
            self.out.append((block or None, count))
        self.pos += count

    def _indirect(self, block: int, level: int) -> None:
        span = self.per_block**level  # logical blocks this pointer covers
        if self.pos >= self.blocks:
            return
        if not block:
            self._add(0, span)
            return
        self.vol.check_run(self.ino, block, 1, f"a level-{level} indirect block")
        self.reads += 1
        if self.reads > self.vol.sb.blocks_count:
            raise CorruptImageError(f"{self.vol.label(self.ino)}: its block map reads more indirect blocks "
                                    "than the volume holds")
        pointers = array("I", self.vol.read_block(block))
        if sys.byteorder == "big":  # pragma: no cover
            pointers.byteswap()
        for p in pointers:
            if self.pos >= self.blocks:
                return
            if level == 1:
                self._add(p, 1)
            else:
                self._indirect(p, level - 1)
