"""Btrfs used ranges: every extent of the extent tree, mapped to each copy on the device.

The extent tree records every allocated range of every block group: data extents
(``EXTENT_ITEM``, key offset = length) and tree blocks (``METADATA_ITEM`` with skinny metadata,
one node each).  Each is mapped through its chunk to all its stripes (DUP: both copies).  Added
always: the first MiB (never allocated; the primary superblock and any boot loader there) and the
superblock mirrors inside the device, which lie inside chunks but are not extents.

Checked: every extent lies inside a chunk, extents are in order and do not overlap, and per block
group they add up to the group's ``used`` count.  With a tree log present (the filesystem was not
cleanly unmounted after an fsync), blocks only the log references are not in the extent tree, so
every chunk is then kept whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..blocks import BlockSource
from . import c_btrfs as c
from .btrfs import BtrfsSuper, Chunk, ChunkMap, Reader, fail, read_chunks, tree_roots


class _Collector:
    """Coalesces consecutive extents of one chunk, then maps them to every stripe."""

    def __init__(self) -> None:
        self.out: list[tuple[int, int]] = []
        self.chunk: Chunk | None = None
        self.start = self.end = 0

    def add(self, chunk: Chunk, start: int, end: int) -> None:
        if chunk is self.chunk and start == self.end:
            self.end = end
            return
        self.flush()
        self.chunk, self.start, self.end = chunk, start, end

    def flush(self) -> None:
        if self.chunk is not None and self.end > self.start:
            for stripe in self.chunk.stripes:
                self.out.append((stripe + self.start - self.chunk.logical, self.end - self.start))
        self.chunk = None


def _whole_chunks(chunks: ChunkMap) -> Iterator[tuple[int, int]]:
    for ch in chunks.chunks:
        for stripe in ch.stripes:
            yield stripe, ch.length


def used_ranges(source: BlockSource, sb: BtrfsSuper) -> Iterator[tuple[int, int]]:
    always = [(0, c.RESERVED_START)]
    always += [(m, c.SUPER_SIZE) for m in c.SUPER_MIRRORS if m + c.SUPER_SIZE <= sb.dev_total_bytes]
    chunks = read_chunks(source, sb)
    if sb.log_root:
        return iter([*always, *_whole_chunks(chunks)])
    reader = Reader(source, sb, chunks)
    roots = tree_roots(reader, sb, {c.EXTENT_TREE, c.BLOCK_GROUP_TREE})
    if c.EXTENT_TREE not in roots:
        raise fail("its root tree has no extent tree")
    groups: dict[int, tuple[int, int]] = {}  # chunk logical -> (length, used) from block group items
    counted: dict[int, int] = {}  # chunk logical -> bytes of extents found
    col = _Collector()
    prev_end = 0
    for item in reader.items(*roots[c.EXTENT_TREE]):
        if item.type == c.BLOCK_GROUP_ITEM:
            groups[item.objectid] = (item.offset, int.from_bytes(item.data[:8], "little"))
            continue
        if item.type == c.EXTENT_ITEM:
            length = item.offset
        elif item.type == c.METADATA_ITEM:
            length = sb.nodesize
        else:
            continue
        start = item.objectid
        if start < prev_end or length <= 0:
            raise fail(f"its extent tree holds an extent at {start:#x}+{length:#x} overlapping the one before")
        chunk = chunks.find(start, length)
        col.add(chunk, start, start + length)
        counted[chunk.logical] = counted.get(chunk.logical, 0) + length
        prev_end = start + length
    col.flush()
    if c.BLOCK_GROUP_TREE in roots:
        for item in reader.items(*roots[c.BLOCK_GROUP_TREE]):
            if item.type == c.BLOCK_GROUP_ITEM:
                groups[item.objectid] = (item.offset, int.from_bytes(item.data[:8], "little"))
    for ch in chunks.chunks:
        length, used = groups.get(ch.logical, (-1, -1))
        if length != ch.length:
            raise fail(f"the chunk at logical {ch.logical:#x} has no matching block group item")
        if counted.get(ch.logical, 0) != used:
            raise fail(f"the block group at logical {ch.logical:#x} says {used} bytes are used but its "
                       f"extents add up to {counted.get(ch.logical, 0)}")
    return iter([*always, *col.out])
