"""ext2 / ext3 / ext4: used blocks from the per-group block bitmaps.

Spec: Linux ``Documentation/filesystems/ext4/{super,group_descr,blockgroup,bitmaps}.rst``
and e2fsprogs ``lib/ext2fs/closefs.c`` (``ext2fs_super_and_bgd_loc2``,
``ext2fs_bg_has_super``), as summarised in ``shared/reference/ntfs-bitmap-and-extfs.md`` §2.

Groups flagged ``BLOCK_UNINIT`` have no valid on-disk bitmap: their used
blocks are computed (superblock backup, GDT and reserved GDT blocks, and any
group's bitmaps or inode table inside them).  Every group's metadata is also
added explicitly, whatever the bitmaps say.  META_BG descriptor placement is
followed; bigalloc is refused.
"""

from __future__ import annotations

import struct
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from ._bitmap import PIECE, RunList, set_runs

SUPERBLOCK_OFFSET = 1024
EXT_MAGIC = 0xEF53

# Superblock fields up to s_first_meta_bg (0x104); offsets in the comments.
SUPERBLOCK = struct.Struct(
    "<II4xI4xI"  # 0x00 s_inodes_count, s_blocks_count_lo, 0x0C s_free_blocks_count_lo, 0x14 s_first_data_block
    "IIIII"  # 0x18 s_log_block_size, s_log_cluster_size, s_blocks_per_group, s_clusters_per_group, ipg
    "12xHHH"  # 0x38 s_magic, s_state, s_errors
    "26xH"  # 0x58 s_inode_size
    "2xIII"  # 0x5C s_feature_compat, s_feature_incompat, s_feature_ro_compat
    "16s16s"  # 0x68 s_uuid, s_volume_name
    "70xH"  # 0xCE s_reserved_gdt_blocks
    "46xH"  # 0xFE s_desc_size
    "4xI"  # 0x104 s_first_meta_bg
)
SB_BLOCKS_COUNT_HI = struct.Struct("<I")  # at 0x150
SB_LOG_GROUPS_PER_FLEX = struct.Struct("<B")  # at 0x174
SB_BACKUP_BGS = struct.Struct("<II")  # at 0x24C

# Group descriptor: the 32-byte base and the 64-bit halves at 0x20.
GROUP_DESC = struct.Struct("<IIIHHHH12x")  # block bitmap, inode bitmap, inode table, 3 counts, bg_flags
GROUP_DESC_HI = struct.Struct("<III")

STATE_ERROR_FS = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_SPARSE_SUPER2 = 0x0200
INCOMPAT_RECOVER = 0x0004
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_FLEX_BG = 0x0200
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
INCOMPAT_CSUM_SEED = 0x2000
BG_BLOCK_UNINIT = 0x0002
BG_CHECKSUM_OFFSET = 0x1E
SB_CHECKSUM_SEED = struct.Struct("<I")  # at 0x270, with INCOMPAT_CSUM_SEED


def _crc_table(poly: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc_table(0x82F63B78)  # Castagnoli, reflected; as the kernel's crc32c(): no inversions
_CRC16 = _crc_table(0xA001)  # CRC-16/ANSI reflected; lib/crc16.c


def _crc(table: list[int], crc: int, data: bytes) -> int:
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def _fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"ext superblock found but {what}; image it in full without --used-only")


@dataclass(frozen=True)
class ExtSuper:
    block_size: int
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    state: int
    compat: int
    incompat: int
    ro_compat: int
    uuid: bytes
    volume_name: bytes
    reserved_gdt_blocks: int
    desc_size: int
    first_meta_bg: int
    backup_bgs: tuple[int, int]
    csum_seed: int

    @classmethod
    def from_bytes(cls, sb: bytes) -> ExtSuper | None:
        """Parse the 1024-byte superblock; ``None`` without the magic, ``UnsupportedError`` if damaged."""
        if len(sb) < 1024:
            return None
        (_, blocks_lo, _, first_data, log_bs, _, bpg, _, ipg, magic, state, _, inode_size, compat,
         incompat, ro_compat, fs_uuid, name, rsv_gdt, desc_size, first_meta_bg) = SUPERBLOCK.unpack_from(sb)
        if magic != EXT_MAGIC:
            return None
        blocks = blocks_lo
        if incompat & INCOMPAT_64BIT:
            blocks |= SB_BLOCKS_COUNT_HI.unpack_from(sb, 0x150)[0] << 32
        desc = desc_size if incompat & INCOMPAT_64BIT else 32
        bad = None
        if log_bs > 6:
            bad = f"s_log_block_size {log_bs}"
        elif not (0 < bpg <= 8 << (10 + log_bs)) or not (0 < ipg <= 8 << (10 + log_bs)):
            bad = f"s_blocks_per_group {bpg} / s_inodes_per_group {ipg}"
        elif first_data != (1 if log_bs == 0 else 0) or blocks <= first_data:
            bad = f"s_first_data_block {first_data} / s_blocks_count {blocks}"
        elif desc < 32 or desc & (desc - 1) or desc > 1024 << log_bs:
            bad = f"s_desc_size {desc_size}"
        elif inode_size < 128 or inode_size & (inode_size - 1) or inode_size > 1024 << log_bs:
            bad = f"s_inode_size {inode_size}"
        if bad:
            raise UnsupportedError(f"ext superblock at offset {SUPERBLOCK_OFFSET} is damaged: {bad}")
        backup = SB_BACKUP_BGS.unpack_from(sb, 0x24C)
        if incompat & INCOMPAT_CSUM_SEED:
            seed = SB_CHECKSUM_SEED.unpack_from(sb, 0x270)[0]
        else:
            seed = _crc(_CRC32C, 0xFFFFFFFF, fs_uuid)
        return cls(1024 << log_bs, blocks, first_data, bpg, ipg, inode_size, state, compat, incompat,
                   ro_compat, fs_uuid, name, rsv_gdt, desc, first_meta_bg, (backup[0], backup[1]), seed)

    @property
    def kind(self) -> str:
        if self.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG):
            return "ext4"
        return "ext3" if self.compat & COMPAT_HAS_JOURNAL else "ext2"

    @property
    def groups(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def desc_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def desc_blocks(self) -> int:
        return -(-self.groups // self.desc_per_block)

    @property
    def label(self) -> str | None:
        name = self.volume_name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name or None

    @property
    def serial(self) -> str:
        return str(uuid.UUID(bytes=self.uuid))

    def desc_checksum(self, g: int, desc: bytes) -> int | None:
        """``ext4_group_desc_csum``: the expected ``bg_checksum``, or ``None`` without checksums."""
        group = g.to_bytes(4, "little")
        rest = desc[BG_CHECKSUM_OFFSET + 2 : self.desc_size]
        if self.ro_compat & RO_COMPAT_METADATA_CSUM:
            crc = _crc(_CRC32C, self.csum_seed, group + desc[:BG_CHECKSUM_OFFSET] + b"\0\0" + rest)
            return crc & 0xFFFF
        if self.ro_compat & RO_COMPAT_GDT_CSUM:
            rest = rest if self.incompat & INCOMPAT_64BIT else b""
            return _crc(_CRC16, 0xFFFF, self.uuid + group + desc[:BG_CHECKSUM_OFFSET] + rest)
        return None

    def group_first_block(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def group_blocks(self, g: int) -> int:
        return min(self.blocks_per_group, self.blocks_count - self.group_first_block(g))

    def has_super(self, g: int) -> bool:
        """``ext2fs_bg_has_super``: does group ``g`` hold a superblock (backup)?"""
        if g == 0:
            return True
        if self.compat & COMPAT_SPARSE_SUPER2:
            return g in self.backup_bgs
        if g <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if not g & 1:
            return False
        for base in (3, 5, 7):
            n = base
            while n < g:
                n *= base
            if n == g:
                return True
        return False

    def meta_blocks(self, g: int) -> list[tuple[int, int]]:
        """``ext2fs_super_and_bgd_loc2``: (first block, count) of the superblock and GDT copies in ``g``."""
        start = self.group_first_block(g)
        if start == 0 and self.block_size == 1024:
            start = 1
        meta_bg = bool(self.incompat & INCOMPAT_META_BG)
        old_desc = self.first_meta_bg if meta_bg else self.desc_blocks + self.reserved_gdt_blocks
        sup = 1 if self.has_super(g) else 0
        out = [(start, 1)] if sup else []
        dpb = self.desc_per_block
        if not meta_bg or g // dpb < self.first_meta_bg:
            if sup:
                out.append((start + 1, old_desc))
        elif g % dpb in (0, 1, dpb - 1):
            out.append((start + sup, 1))
        return out

    def desc_block(self, i: int) -> int:
        """Block holding descriptor block ``i`` of the primary GDT."""
        if self.incompat & INCOMPAT_META_BG and i >= self.first_meta_bg:
            g = i * self.desc_per_block
            return self.group_first_block(g) + (1 if self.has_super(g) else 0)
        return self.first_data_block + 1 + i


@dataclass
class GroupTable:
    """Every group's descriptor fields, one array per field (no object per group)."""

    block_bitmap: array[int]
    inode_bitmap: array[int]
    inode_table: array[int]
    flags: array[int]


def probe(source: BlockSource) -> ExtSuper | None:
    if source.size < SUPERBLOCK_OFFSET + 1024:
        return None
    return ExtSuper.from_bytes(read_at(source, SUPERBLOCK_OFFSET, 1024))


def _read_groups(source: BlockSource, sb: ExtSuper) -> GroupTable:
    table = GroupTable(array("Q"), array("Q"), array("Q"), array("H"))
    bs, dsz, dpb = sb.block_size, sb.desc_size, sb.desc_per_block
    wide = bool(sb.incompat & INCOMPAT_64BIT) and dsz >= 64
    for i in range(sb.desc_blocks):
        block = sb.desc_block(i)
        if (block + 1) * bs > source.size:
            raise _fail(f"group descriptor block {i} at offset {block * bs:#x} is past the end of the source")
        data = read_at(source, block * bs, bs)
        for j in range(min(dpb, sb.groups - i * dpb)):
            pos = j * dsz
            g = i * dpb + j
            want = sb.desc_checksum(g, data[pos : pos + dsz])
            got = int.from_bytes(data[pos + BG_CHECKSUM_OFFSET : pos + BG_CHECKSUM_OFFSET + 2], "little")
            if want is not None and want != got:
                raise _fail(f"group descriptor {g} at offset {block * bs + pos:#x} is damaged "
                            f"(checksum {got:#06x}, expected {want:#06x})")
            bb, ib, it, _, _, _, flags = GROUP_DESC.unpack_from(data, pos)
            if wide:
                bb_hi, ib_hi, it_hi = GROUP_DESC_HI.unpack_from(data, pos + 0x20)
                bb, ib, it = bb | bb_hi << 32, ib | ib_hi << 32, it | it_hi << 32
            table.block_bitmap.append(bb)
            table.inode_bitmap.append(ib)
            table.inode_table.append(it)
            table.flags.append(flags)
    return table


def _check_groups(sb: ExtSuper, table: GroupTable, itable_blocks: int) -> None:
    """A zeroed or garbage descriptor points its bitmaps into the boot area or past the end."""
    low = sum(n for _, n in sb.meta_blocks(0)) + sb.first_data_block
    for g in range(sb.groups):
        for name, block, n in (("block bitmap", table.block_bitmap[g], 1),
                               ("inode bitmap", table.inode_bitmap[g], 1),
                               ("inode table", table.inode_table[g], itable_blocks)):
            if block < low or block + n > sb.blocks_count:
                off = sb.desc_block(g // sb.desc_per_block) * sb.block_size + g % sb.desc_per_block * sb.desc_size
                raise _fail(f"group descriptor {g} at offset {off:#x} is damaged ({name} at block {block})")


def used_ranges(source: BlockSource, sb: ExtSuper) -> Iterator[tuple[int, int]]:
    """Used blocks from the bitmaps (computed for BLOCK_UNINIT groups) plus all metadata, in bytes."""
    if sb.ro_compat & RO_COMPAT_BIGALLOC:
        raise _fail("it uses bigalloc (not supported)")
    if sb.incompat & INCOMPAT_RECOVER:
        raise _fail("its journal needs recovery (mounted, or not cleanly unmounted; run e2fsck)")
    if sb.state & STATE_ERROR_FS:
        raise _fail("it has errors recorded (run e2fsck)")
    bs = sb.block_size
    itable_blocks = -(-sb.inodes_per_group * sb.inode_size // bs)
    table = _read_groups(source, sb)
    _check_groups(sb, table, itable_blocks)
    # The kernel honours BLOCK_UNINIT only with group-descriptor checksums.
    csum = bool(sb.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM))
    always: list[tuple[int, int]] = [(0, (sb.first_data_block + 1) * bs)]  # boot area + superblock
    for g in range(sb.groups):
        always.extend((b * bs, n * bs) for b, n in sb.meta_blocks(g))
        always.append((table.block_bitmap[g] * bs, bs))
        always.append((table.inode_bitmap[g] * bs, bs))
        always.append((table.inode_table[g] * bs, itable_blocks * bs))
    if (sb.blocks_per_group + 7) // 8 > bs:
        raise _fail(f"s_blocks_per_group {sb.blocks_per_group} needs a bitmap larger than a block")
    used = RunList()
    batch = max(1, PIECE // bs)
    view = memoryview(bytearray(batch * bs))
    g = 0
    while g < sb.groups:
        if csum and table.flags[g] & BG_BLOCK_UNINIT:
            g += 1  # nothing but the metadata in ``always``
            continue
        # With flex_bg the bitmaps of consecutive groups are consecutive blocks: read them at once.
        first, n = table.block_bitmap[g], 1
        while (g + n < sb.groups and n < batch and table.block_bitmap[g + n] == first + n
               and not (csum and table.flags[g + n] & BG_BLOCK_UNINIT)):
            n += 1
        source.readinto_at(first * bs, view[: n * bs])
        for k in range(n):
            used.extend(set_runs(view[k * bs : (k + 1) * bs], sb.group_first_block(g + k), sb.group_blocks(g + k)))
        g += n
    return chain(always, used.byte_ranges(bs))
