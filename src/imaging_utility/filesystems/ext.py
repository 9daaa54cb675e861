"""ext2 / ext3 / ext4: used blocks from the per-group block bitmaps.

Spec: Linux ``Documentation/filesystems/ext4/{super,group_descr,blockgroup,bitmaps,bigalloc}.rst``
and e2fsprogs ``lib/ext2fs/closefs.c`` (``ext2fs_super_and_bgd_loc2``,
``ext2fs_bg_has_super``), as summarised in ``shared/reference/ntfs-bitmap-and-extfs.md`` §2.
Structures are declared in ``c_ext.py``.

Groups flagged ``BLOCK_UNINIT`` have no valid on-disk bitmap: their used
blocks are computed (superblock backup, GDT and reserved GDT blocks, and any
group's bitmaps or inode table inside them).  Every group's metadata is also
added explicitly, whatever the bitmaps say.  A group whose descriptor, flags or
bitmap contradict each other is kept whole, with a warning.  META_BG descriptor
placement is followed; with bigalloc the bitmaps count clusters of several blocks.
Revision 0 superblocks (no dynamic fields) are read as the kernel reads them.
"""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain

from .. import crc32c
from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from ._bitmap import PIECE, RunList, set_runs
from .c_ext import (
    BG_BLOCK_BITMAP_CSUM_HI,
    BG_BLOCK_BITMAP_CSUM_LO,
    BG_BLOCK_UNINIT,
    BG_CHECKSUM_OFFSET,
    COMPAT_HAS_JOURNAL,
    COMPAT_SPARSE_SUPER2,
    CRC16,
    EXT_MAGIC,
    GOOD_OLD_FIRST_INO,
    GOOD_OLD_INODE_SIZE,
    GOOD_OLD_REV,
    GROUP_DESC,
    GROUP_DESC_HI,
    INCOMPAT_64BIT,
    INCOMPAT_CSUM_SEED,
    INCOMPAT_EXTENTS,
    INCOMPAT_FLEX_BG,
    INCOMPAT_META_BG,
    INCOMPAT_RECOVER,
    RO_COMPAT_BIGALLOC,
    RO_COMPAT_GDT_CSUM,
    RO_COMPAT_METADATA_CSUM,
    RO_COMPAT_SPARSE_SUPER,
    SB_BACKUP_BGS,
    SB_BLOCKS_COUNT_HI,
    SB_CHECKSUM_SEED,
    SB_FIRST_INO,
    SB_JOURNAL_INUM,
    SB_REV_LEVEL,
    STATE_ERROR_FS,
    SUPERBLOCK,
    SUPERBLOCK_OFFSET,
    crc,
)

__all__ = ["INCOMPAT_RECOVER", "RO_COMPAT_BIGALLOC", "ExtSuper", "probe", "used_ranges"]


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
    rev_level: int = 1
    cluster_ratio: int = 1  # blocks per allocation cluster (bigalloc), else 1
    first_ino: int = GOOD_OLD_FIRST_INO
    journal_inum: int = 0
    inodes_count: int = 0

    @classmethod
    def from_bytes(cls, sb: bytes) -> ExtSuper | None:
        """Parse the 1024-byte superblock; ``None`` without the magic, ``UnsupportedError`` if damaged.

        Revision 0 (``s_rev_level`` 0, as early mke2fs wrote it) leaves the dynamic fields undefined:
        as the kernel does, its inodes are 128 bytes and the first ordinary inode is 11.
        """
        if len(sb) < 1024:
            return None
        (inodes, blocks_lo, _, first_data, log_bs, log_cs, bpg, cpg, ipg, magic, state, _, inode_size, compat,
         incompat, ro_compat, fs_uuid, name, rsv_gdt, desc_size, first_meta_bg) = SUPERBLOCK.unpack_from(sb)
        if magic != EXT_MAGIC:
            return None
        rev = SB_REV_LEVEL.unpack_from(sb, 0x4C)[0]
        first_ino = SB_FIRST_INO.unpack_from(sb, 0x54)[0]
        if rev == GOOD_OLD_REV:
            inode_size, first_ino = GOOD_OLD_INODE_SIZE, GOOD_OLD_FIRST_INO
        blocks = blocks_lo
        if incompat & INCOMPAT_64BIT:
            blocks |= SB_BLOCKS_COUNT_HI.unpack_from(sb, 0x150)[0] << 32
        desc = desc_size if incompat & INCOMPAT_64BIT else 32
        bigalloc = bool(ro_compat & RO_COMPAT_BIGALLOC)
        ratio = 1 << (log_cs - log_bs) if bigalloc and log_bs <= log_cs <= log_bs + 16 else 1
        bad = None
        if log_bs > 6:
            bad = f"s_log_block_size {log_bs}"
        elif bigalloc and not (log_bs <= log_cs <= log_bs + 16):
            bad = f"s_log_cluster_size {log_cs} with s_log_block_size {log_bs}"
        elif (not (0 < cpg <= 8 << (10 + log_bs)) if bigalloc else not (0 < bpg <= 8 << (10 + log_bs))) \
                or (bigalloc and bpg != cpg * ratio) or not (0 < ipg <= 8 << (10 + log_bs)):
            bad = f"s_blocks_per_group {bpg} / s_clusters_per_group {cpg} / s_inodes_per_group {ipg}"
        elif first_data != (1 if log_bs == 0 and ratio == 1 else 0) or blocks <= first_data:
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
            seed = crc32c.raw(0xFFFFFFFF, fs_uuid)
        return cls(1024 << log_bs, blocks, first_data, bpg, ipg, inode_size, state, compat, incompat,
                   ro_compat, fs_uuid, name, rsv_gdt, desc, first_meta_bg, (backup[0], backup[1]), seed,
                   rev, ratio, first_ino, SB_JOURNAL_INUM.unpack_from(sb, 0xE0)[0], inodes)

    @property
    def kind(self) -> str:
        if self.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) or self.cluster_ratio > 1:
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
            return crc32c.raw(self.csum_seed, group + desc[:BG_CHECKSUM_OFFSET] + b"\0\0" + rest) & 0xFFFF
        if self.ro_compat & RO_COMPAT_GDT_CSUM:
            rest = rest if self.incompat & INCOMPAT_64BIT else b""
            return crc(CRC16, 0xFFFF, self.uuid + group + desc[:BG_CHECKSUM_OFFSET] + rest)
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
        # right after the superblock's block (the kernel's descriptor_loc): block 2 with 1 KiB blocks, even
        # with bigalloc, where s_first_data_block is 0
        return SUPERBLOCK_OFFSET // self.block_size + 1 + i


@dataclass
class GroupTable:
    """Every group's descriptor fields, one array per field (no object per group)."""

    block_bitmap: array[int]
    inode_bitmap: array[int]
    inode_table: array[int]
    free: array[int]  # bg_free_blocks_count: free clusters
    flags: array[int]
    bitmap_csum: array[int]  # bg_block_bitmap_csum (lo, and hi where the descriptor has it)
    damaged: dict[int, str] = field(default_factory=dict)  # group -> why its descriptor is not trusted


def probe(source: BlockSource) -> ExtSuper | None:
    if source.size < SUPERBLOCK_OFFSET + 1024:
        return None
    return ExtSuper.from_bytes(read_at(source, SUPERBLOCK_OFFSET, 1024))


def _read_groups(source: BlockSource, sb: ExtSuper) -> GroupTable:
    """The descriptors; one failing its checksum is recorded in ``damaged``, its fields kept as found."""
    table = GroupTable(array("Q"), array("Q"), array("Q"), array("Q"), array("H"), array("L"))
    bs, dsz, dpb = sb.block_size, sb.desc_size, sb.desc_per_block
    wide = bool(sb.incompat & INCOMPAT_64BIT) and dsz >= 64
    if sb.desc_blocks:  # every descriptor block is needed: one past the end fails before any is read
        last = sb.desc_block(sb.desc_blocks - 1)
        if (last + 1) * bs > source.size:
            raise _fail(f"group descriptor block {sb.desc_blocks - 1} at offset {last * bs:#x} is past the end "
                        f"of the source ({sb.groups} groups claimed)")
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
                table.damaged[g] = (f"descriptor at offset {block * bs + pos:#x} fails its checksum "
                                    f"({got:#06x}, expected {want:#06x})")
            bb, ib, it, free, _, _, flags = GROUP_DESC.unpack_from(data, pos)
            if wide:
                bb_hi, ib_hi, it_hi, free_hi = GROUP_DESC_HI.unpack_from(data, pos + 0x20)
                bb, ib, it, free = bb | bb_hi << 32, ib | ib_hi << 32, it | it_hi << 32, free | free_hi << 16
            table.block_bitmap.append(bb)
            table.inode_bitmap.append(ib)
            table.inode_table.append(it)
            table.free.append(free)
            table.flags.append(flags)
            csum = int.from_bytes(data[pos + BG_BLOCK_BITMAP_CSUM_LO : pos + BG_BLOCK_BITMAP_CSUM_LO + 2], "little")
            if dsz >= BG_BLOCK_BITMAP_CSUM_HI + 2:
                hi = data[pos + BG_BLOCK_BITMAP_CSUM_HI : pos + BG_BLOCK_BITMAP_CSUM_HI + 2]
                csum |= int.from_bytes(hi, "little") << 16
            table.bitmap_csum.append(csum)
    return table


def _check_groups(sb: ExtSuper, table: GroupTable, itable_blocks: int) -> None:
    """A zeroed or garbage descriptor points its bitmaps into the boot area or past the end.

    Descriptors already known damaged (checksum) are left out: their group is kept whole instead."""
    low = sum(n for _, n in sb.meta_blocks(0)) + sb.first_data_block
    for g in range(sb.groups):
        if g in table.damaged:
            continue
        for name, block, n in (("block bitmap", table.block_bitmap[g], 1),
                               ("inode bitmap", table.inode_bitmap[g], 1),
                               ("inode table", table.inode_table[g], itable_blocks)):
            if block < low or block + n > sb.blocks_count:
                off = sb.desc_block(g // sb.desc_per_block) * sb.block_size + g % sb.desc_per_block * sb.desc_size
                raise _fail(f"group descriptor {g} at offset {off:#x} is damaged ({name} at block {block})")


def _group_metadata(sb: ExtSuper, table: GroupTable, itable_blocks: int) -> list[tuple[int, int]]:
    """``(first block, count)`` of every superblock copy, GDT copy, bitmap and inode table."""
    out: list[tuple[int, int]] = []
    for g in range(sb.groups):
        out.extend(sb.meta_blocks(g))
        if g not in table.damaged:
            out.extend(((table.block_bitmap[g], 1), (table.inode_bitmap[g], 1),
                        (table.inode_table[g], itable_blocks)))
    return out


def _meta_clusters(sb: ExtSuper, metadata: list[tuple[int, int]]) -> array[int]:
    """How many clusters of each group hold metadata: what a BLOCK_UNINIT group may use, and no more."""
    ratio, bpg, first = sb.cluster_ratio, sb.blocks_per_group, sb.first_data_block
    per_group: dict[int, RunList] = {}
    for start, n in sorted(metadata):
        block, end = max(start, first), min(start + n, sb.blocks_count)
        while block < end:
            g = (block - first) // bpg
            stop = min(end, sb.group_first_block(g) + bpg)
            per_group.setdefault(g, RunList()).add(block // ratio, -(-stop // ratio))
            block = stop
    counts = array("Q", bytes(8 * sb.groups))
    for g, runs in per_group.items():
        counts[g] = runs.units
    return counts


def _untrusted_warning(sb: ExtSuper, untrusted: dict[int, str]) -> str:
    shown = "; ".join(f"group {g}: {why}" for g, why in sorted(untrusted.items())[:3])
    more = f"; and {len(untrusted) - 3} more" if len(untrusted) > 3 else ""
    size = sum(sb.group_blocks(g) for g in untrusted) * sb.block_size
    n = len(untrusted)
    return (f"{sb.kind}: the allocation metadata of {n} block group{'s' if n > 1 else ''} cannot be trusted "
            f"({shown}{more}); {'they are' if n > 1 else 'it is'} imaged in full ({size} bytes)")


def _bitmap_checksum_fails(sb: ExtSuper, table: GroupTable, g: int, bitmap: memoryview) -> str:
    """``ext4_block_bitmap_csum_verify``: with metadata_csum, a bitmap the kernel would reject (it marks the
    group corrupt and allocates nothing more there) is not a map of what the group uses.  Empty when sound."""
    if not sb.ro_compat & RO_COMPAT_METADATA_CSUM:
        return ""
    got = crc32c.raw(sb.csum_seed, bitmap)
    want = table.bitmap_csum[g]
    if sb.desc_size < BG_BLOCK_BITMAP_CSUM_HI + 2:
        got &= 0xFFFF
    if got == want:
        return ""
    return f"its block bitmap fails its checksum ({want:#x}, computed {got:#x})"


def used_ranges(source: BlockSource, sb: ExtSuper, warnings: list[str] | None = None) -> Iterator[tuple[int, int]]:
    """Used clusters from the bitmaps (computed for BLOCK_UNINIT groups) plus all metadata, in bytes.

    A group whose allocation metadata cannot be trusted is kept whole, and one line saying which
    groups and why is appended to ``warnings``: its descriptor or its block bitmap fails its checksum,
    it is flagged BLOCK_UNINIT while its free count says more is in use than its metadata, or its bitmap marks
    fewer clusters used than its free count implies.  Data the kernel reads is never dropped
    because a flag or a bitmap says "free"."""
    if sb.incompat & INCOMPAT_RECOVER:
        raise _fail("its journal needs recovery (mounted, or not cleanly unmounted; run e2fsck)")
    if sb.state & STATE_ERROR_FS:
        raise _fail("it has errors recorded (run e2fsck)")
    bs, ratio = sb.block_size, sb.cluster_ratio
    cpg = sb.blocks_per_group // ratio
    itable_blocks = -(-sb.inodes_per_group * sb.inode_size // bs)
    table = _read_groups(source, sb)
    _check_groups(sb, table, itable_blocks)
    if (cpg + 7) // 8 > bs:
        raise _fail(f"s_clusters_per_group {cpg} needs a bitmap larger than a block")
    # The kernel honours BLOCK_UNINIT only with group-descriptor checksums.
    csum = bool(sb.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM))
    metadata = _group_metadata(sb, table, itable_blocks)
    always: list[tuple[int, int]] = [(0, (sb.first_data_block + 1) * bs)]  # boot area + superblock
    always.extend((b * bs, n * bs) for b, n in metadata)

    def uninit(g: int) -> bool:
        return csum and g not in table.damaged and bool(table.flags[g] & BG_BLOCK_UNINIT)

    meta = _meta_clusters(sb, metadata) if any(uninit(g) for g in range(sb.groups)) else None
    untrusted = dict(table.damaged)
    used = RunList()
    batch = max(1, PIECE // bs)
    view = memoryview(bytearray(batch * bs))
    g = 0
    while g < sb.groups:
        first_cluster = sb.group_first_block(g) // ratio
        clusters = -(-sb.group_blocks(g) // ratio)
        if g in untrusted:
            used.add(first_cluster, first_cluster + clusters)
            g += 1
            continue
        if uninit(g):
            assert meta is not None
            if table.free[g] != clusters - meta[g]:
                untrusted[g] = (f"flagged BLOCK_UNINIT, but its free count says {clusters - table.free[g]} "
                                f"clusters are in use where its metadata takes {meta[g]}")
                used.add(first_cluster, first_cluster + clusters)
            g += 1  # nothing but the metadata in ``always``
            continue
        # With flex_bg the bitmaps of consecutive groups are consecutive blocks: read them at once.
        first, n = table.block_bitmap[g], 1
        while (g + n < sb.groups and n < batch and table.block_bitmap[g + n] == first + n
               and g + n not in untrusted and not uninit(g + n)):
            n += 1
        source.readinto_at(first * bs, view[: n * bs])
        for k in range(n):
            h = g + k
            base = sb.group_first_block(h) // ratio
            count = -(-sb.group_blocks(h) // ratio)
            bitmap = view[k * bs : (k + 1) * bs]
            why = _bitmap_checksum_fails(sb, table, h, bitmap[: cpg // 8])
            if why:
                untrusted[h] = why
                used.add(base, base + count)
                continue
            runs = list(set_runs(bitmap, base, count))
            marked = sum(e - s for s, e in runs)
            if marked < count - table.free[h]:
                untrusted[h] = (f"its bitmap marks {marked} clusters in use, its free count says "
                                f"{count - table.free[h]}")
                used.add(base, base + count)
            else:
                used.extend(runs)
        g += n
    if untrusted and warnings is not None:
        warnings.append(_untrusted_warning(sb, untrusted))
    return chain(always, used.byte_ranges(bs * ratio))
