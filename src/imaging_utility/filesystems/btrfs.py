"""Btrfs (one device): superblock, chunk map and checked B-tree walks.

Spec: Linux ``fs/btrfs`` (``disk-io.c``: superblock and its mirrors, ``btrfs_validate_super``;
``volumes.c``: chunk mapping; ``tree-checker.c``: what a sane tree block is) and
``include/uapi/linux/btrfs_tree.h``, as summarised in ``shared/reference/xfs-btrfs-lvm.md`` §2.

Every tree block address is *logical*; the chunk map (bootstrapped from the superblock's
``sys_chunk_array``, then the chunk tree) turns it into device offsets, one per stripe (DUP keeps
two copies on the one device: a block whose checksum fails is read from the other copy).  A tree
block is trusted only if its checksum, its own address, the filesystem id, its level and the
generation its parent expects all match; a block reached twice is a loop.  ``used_ranges`` lives
in ``btrfs_map.py``.
"""

from __future__ import annotations

import bisect
import hashlib
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import xxhash

from .. import crc32c
from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from . import c_btrfs as c

_HINT = "image it in full without --used-only"


def fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"Btrfs superblock found but {what}; {_HINT}")


# checksum type -> (size, the checksum of one block as stored)
DIGESTS: dict[int, tuple[int, Callable[[bytes], bytes]]] = {
    c.CSUM_CRC32C: (4, lambda b: crc32c.function()(b).to_bytes(4, "little")),
    c.CSUM_XXHASH: (8, lambda b: xxhash.xxh64_intdigest(b).to_bytes(8, "little")),
    c.CSUM_SHA256: (32, lambda b: hashlib.sha256(b).digest()),
    c.CSUM_BLAKE2: (32, lambda b: hashlib.blake2b(b, digest_size=32).digest()),
}


def csum_ok(csum_type: int, block: bytes | bytearray | memoryview) -> bool:
    """The checksum in the first 32 bytes of ``block`` covers the rest of it."""
    if csum_type not in DIGESTS:
        return False
    size, digest = DIGESTS[csum_type]
    return digest(bytes(block[c.CSUM_SIZE :])) == bytes(block[:size])


@dataclass(frozen=True)
class BtrfsSuper:
    fsid: bytes
    generation: int
    root: int
    chunk_root: int
    log_root: int
    total_bytes: int
    bytes_used: int
    num_devices: int
    sectorsize: int
    nodesize: int
    sys_chunk_array_size: int
    compat_ro: int
    incompat: int
    csum_type: int
    root_level: int
    chunk_root_level: int
    devid: int
    dev_total_bytes: int
    label_raw: bytes
    metadata_uuid: bytes
    sys_chunk_array: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> BtrfsSuper | None:
        """Parse the 4 KiB primary superblock; ``None`` without the magic, ``UnsupportedError`` if damaged."""
        if len(data) < c.SUPER_SIZE or data[64:72] != c.MAGIC:
            return None
        (fsid, bytenr, _, _, generation, root, chunk_root, log_root, _, total, used, _, ndev, sectorsize,
         nodesize, _, _, sys_size, _, _, compat_ro, incompat, csum_type, root_level, chunk_level, _, devid,
         dev_total) = c.SUPERBLOCK.unpack_from(data, c.SUPERBLOCK_OFFSET)
        bad = None
        if csum_type > c.CSUM_BLAKE2:
            bad = f"checksum type {csum_type}"
        elif not csum_ok(csum_type, data[: c.SUPER_SIZE]):
            bad = "checksum mismatch"
        elif bytenr != c.SUPER_OFFSET:
            bad = f"bytenr {bytenr}"
        elif not (4096 <= sectorsize <= 65536 and not sectorsize & (sectorsize - 1)):
            bad = f"sector size {sectorsize}"
        elif not (sectorsize <= nodesize <= 65536 and not nodesize & (nodesize - 1)):
            bad = f"node size {nodesize}"
        elif not 0 < sys_size <= c.SYS_CHUNK_ARRAY_SIZE:
            bad = f"sys_chunk_array_size {sys_size}"
        elif root_level > c.MAX_LEVEL or chunk_level > c.MAX_LEVEL:
            bad = f"root levels {root_level} / {chunk_level}"
        elif dev_total < c.RESERVED_START or ndev < 1:
            bad = f"device size {dev_total}, {ndev} devices"
        elif any(x % sectorsize for x in (root, chunk_root, log_root)):
            bad = "tree root addresses not aligned to the sector size"
        if bad:
            raise UnsupportedError(f"Btrfs superblock at offset {c.SUPER_OFFSET:#x} is damaged: {bad}")
        meta = data[c.METADATA_UUID_OFFSET : c.METADATA_UUID_OFFSET + 16]
        return cls(fsid, generation, root, chunk_root, log_root, total, used, ndev, sectorsize, nodesize, sys_size,
                   compat_ro, incompat, csum_type, root_level, chunk_level, devid, dev_total,
                   data[c.LABEL_OFFSET : c.LABEL_OFFSET + c.LABEL_SIZE],
                   meta if incompat & c.INCOMPAT_METADATA_UUID else fsid,
                   data[c.SYS_CHUNK_ARRAY_OFFSET : c.SYS_CHUNK_ARRAY_OFFSET + sys_size])

    @property
    def label(self) -> str | None:
        name = self.label_raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name or None

    @property
    def serial(self) -> str:
        return str(uuidlib.UUID(bytes=self.fsid))


def probe(source: BlockSource) -> BtrfsSuper | None:
    if source.size < c.SUPER_OFFSET + c.SUPER_SIZE:
        return None
    return BtrfsSuper.from_bytes(read_at(source, c.SUPER_OFFSET, c.SUPER_SIZE))


@dataclass(frozen=True, slots=True)
class Chunk:
    logical: int
    length: int
    type: int
    stripes: tuple[int, ...]  # device offset of each copy

    @property
    def end(self) -> int:
        return self.logical + self.length


class ChunkMap:
    """Logical → device offsets.  Only SINGLE and DUP chunks on this device are accepted."""

    def __init__(self, sb: BtrfsSuper) -> None:
        self.sb = sb
        self.starts: list[int] = []
        self.chunks: list[Chunk] = []

    def add(self, logical: int, data: bytes | memoryview, where: str) -> int:
        """Add the chunk item in ``data``; returns its size in bytes."""
        length, _, _, ctype, _, _, _, num_stripes, _ = c.CHUNK.unpack_from(data)
        size: int = c.CHUNK.size + num_stripes * c.STRIPE.size
        if not 1 <= num_stripes <= 16 or len(data) < size:
            raise fail(f"the chunk at logical {logical:#x} ({where}) has {num_stripes} stripes")
        profile = ctype & c.BLOCK_GROUP_PROFILES
        if profile not in (0, c.BLOCK_GROUP_DUP) or num_stripes != (2 if profile else 1):
            raise fail(f"the chunk at logical {logical:#x} uses profile {ctype:#x} with {num_stripes} stripes "
                       "(only single and dup are supported on one device)")
        stripes = []
        for i in range(num_stripes):
            devid, offset, _ = c.STRIPE.unpack_from(data, c.CHUNK.size + i * c.STRIPE.size)
            if devid != self.sb.devid or offset + length > self.sb.dev_total_bytes or length <= 0:
                raise fail(f"the chunk at logical {logical:#x} ({where}) maps to device {devid} offset "
                           f"{offset:#x}+{length:#x}, outside this device")
            stripes.append(offset)
        i = bisect.bisect_right(self.starts, logical)
        if i and self.chunks[i - 1].logical == logical and self.chunks[i - 1].length == length:
            return size  # the sys_chunk_array copy of a chunk tree item
        if (i and self.chunks[i - 1].end > logical) or (i < len(self.starts) and logical + length > self.starts[i]):
            raise fail(f"the chunk at logical {logical:#x} ({where}) overlaps another chunk")
        self.starts.insert(i, logical)
        self.chunks.insert(i, Chunk(logical, length, ctype, tuple(stripes)))
        return size

    def find(self, logical: int, length: int) -> Chunk:
        i = bisect.bisect_right(self.starts, logical) - 1
        if i < 0 or logical + length > self.chunks[i].end:
            raise fail(f"logical range {logical:#x}+{length:#x} is not inside one chunk")
        return self.chunks[i]


@dataclass(frozen=True, slots=True)
class Item:
    objectid: int
    type: int
    offset: int
    data: memoryview


class Reader:
    """Checked reads of tree blocks through the chunk map.  Not thread-safe."""

    def __init__(self, source: BlockSource, sb: BtrfsSuper, chunks: ChunkMap) -> None:
        self.source, self.sb, self.chunks = source, sb, chunks

    def node(self, logical: int, level: int | None, generation: int | None) -> bytearray:
        """The tree block at ``logical``, checked (``level``/``generation``: what its parent expects)."""
        ns = self.sb.nodesize
        chunk = self.chunks.find(logical, ns)
        why = ""
        for stripe in chunk.stripes:
            off = stripe + logical - chunk.logical
            block = bytearray(ns)
            self.source.readinto_at(off, block)
            _, fsid, bytenr, _, _, gen, _, nritems, got_level = c.HEADER.unpack_from(block)
            if not csum_ok(self.sb.csum_type, block):
                why = "checksum mismatch"
            elif bytenr != logical or fsid != self.sb.metadata_uuid:
                why = f"it names itself {bytenr:#x} of another filesystem" if fsid != self.sb.metadata_uuid \
                    else f"it names itself {bytenr:#x}"
            elif got_level != (got_level if level is None else level) or got_level > c.MAX_LEVEL:
                why = f"level {got_level}, expected {level}"
            elif generation is not None and gen != generation:
                why = f"generation {gen}, its parent expects {generation}"
            elif nritems > (ns - c.HEADER.size) // (c.ITEM.size if got_level == 0 else c.KEY_PTR.size):
                why = f"{nritems} items"
            else:
                return block
            why = f"{why} at offset {off:#x}"
        raise fail(f"the tree block at logical {logical:#x} is damaged ({why})")

    def items(self, root: int, level: int) -> Iterator[Item]:
        """Every leaf item of the tree at ``root`` in key order; loops and bad items are errors."""
        if level > c.MAX_LEVEL:
            raise fail(f"the tree at logical {root:#x} claims level {level}")
        seen: set[int] = set()
        stack: list[tuple[int, int, int | None]] = [(root, level, None)]
        ns = self.sb.nodesize
        while stack:
            logical, lvl, gen = stack.pop()
            if logical in seen:
                raise fail(f"a B-tree loops (the block at logical {logical:#x} is reached twice)")
            seen.add(logical)
            block = self.node(logical, lvl, gen)
            nritems = c.HEADER.unpack_from(block)[7]
            view = memoryview(block)
            if lvl:
                ptrs = [c.KEY_PTR.unpack_from(block, c.HEADER.size + i * c.KEY_PTR.size) for i in range(nritems)]
                stack.extend((ptr, lvl - 1, pgen) for _, _, _, ptr, pgen in reversed(ptrs))
                continue
            for i in range(nritems):
                objectid, typ, offset, doff, dsize = c.ITEM.unpack_from(block, c.HEADER.size + i * c.ITEM.size)
                start = c.HEADER.size + doff
                if start + dsize > ns or start < c.HEADER.size + nritems * c.ITEM.size:
                    raise fail(f"the leaf at logical {logical:#x} has item {i} outside the block")
                yield Item(objectid, typ, offset, view[start : start + dsize])


def tree_roots(reader: Reader, sb: BtrfsSuper, wanted: set[int]) -> dict[int, tuple[int, int]]:
    """``{objectid: (bytenr, level)}`` of the ``wanted`` trees named in the root tree, which is walked (and
    so checked) whole."""
    roots: dict[int, tuple[int, int]] = {}
    for item in reader.items(sb.root, sb.root_level):
        if item.type == c.ROOT_ITEM and item.objectid in wanted:
            if len(item.data) <= c.ROOT_ITEM_LEVEL_OFFSET:
                raise fail(f"the root item of tree {item.objectid} is truncated")
            bytenr = int.from_bytes(item.data[c.ROOT_ITEM_BYTENR_OFFSET : c.ROOT_ITEM_BYTENR_OFFSET + 8], "little")
            roots[item.objectid] = (bytenr, item.data[c.ROOT_ITEM_LEVEL_OFFSET])
    return roots


def check_supported(sb: BtrfsSuper) -> None:
    """Raise ``UnsupportedError`` for what this reader does not read: several devices, zoned, RAID5/6 and
    extent-tree-v2 volumes."""
    if sb.num_devices != 1:
        raise fail(f"it spans {sb.num_devices} devices (only single-device Btrfs is supported)")
    bad = sb.incompat & (c.INCOMPAT_ZONED | c.INCOMPAT_RAID56 | c.INCOMPAT_EXTENT_TREE_V2)
    if bad:
        raise fail(f"it uses unsupported incompatible features {bad:#x} (zoned, raid56 or extent-tree-v2)")


def read_chunks(source: BlockSource, sb: BtrfsSuper) -> ChunkMap:
    """The chunk map: the SYSTEM chunks from the superblock, then every chunk of the chunk tree."""
    check_supported(sb)
    chunks = ChunkMap(sb)
    arr = sb.sys_chunk_array
    pos = 0
    while pos < len(arr):
        if pos + c.KEY.size + c.CHUNK.size > len(arr):
            raise fail("its sys_chunk_array is truncated")
        _, typ, logical = c.KEY.unpack_from(arr, pos)
        if typ != c.CHUNK_ITEM:
            raise fail(f"its sys_chunk_array holds key type {typ} at byte {pos}")
        pos += c.KEY.size
        pos += chunks.add(logical, memoryview(arr)[pos:], "sys_chunk_array")
    for item in Reader(source, sb, chunks).items(sb.chunk_root, sb.chunk_root_level):
        if item.type == c.CHUNK_ITEM:
            if len(item.data) < c.CHUNK.size:
                raise fail(f"the chunk item at logical {item.offset:#x} is truncated")
            chunks.add(item.offset, item.data, "chunk tree")
    return chunks
