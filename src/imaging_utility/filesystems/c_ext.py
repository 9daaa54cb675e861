"""ext2/3/4 on-disk structures and constants: superblock, group descriptor, inode, extent tree,
directory entry, extended attribute entry; and the two checksums ext uses.

Spec: Linux ``Documentation/filesystems/ext4/`` (``super.rst``, ``group_descr.rst``, ``inodes.rst``,
``ifork.rst``, ``directory.rst``, ``attributes.rst``, ``inlinedata.rst``), summarised in
``shared/reference/ntfs-bitmap-and-extfs.md`` §2.  Field names are the spec's, without their prefix.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any

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
SB_REV_LEVEL = struct.Struct("<I")  # at 0x4C
SB_FIRST_INO = struct.Struct("<I")  # at 0x54 (revision 1 and later)
SB_JOURNAL_INUM = struct.Struct("<I")  # at 0xE0
SB_BLOCKS_COUNT_HI = struct.Struct("<I")  # at 0x150
SB_BACKUP_BGS = struct.Struct("<II")  # at 0x24C
SB_CHECKSUM_SEED = struct.Struct("<I")  # at 0x270, with INCOMPAT_CSUM_SEED

GOOD_OLD_REV = 0  # revision 0: the dynamic fields (inode size, first inode, features) are undefined
GOOD_OLD_INODE_SIZE = 128
GOOD_OLD_FIRST_INO = 11

# Group descriptor: the 32-byte base (block bitmap, inode bitmap, inode table, free blocks, free inodes,
# used dirs, bg_flags) and the 64-bit halves at 0x20 (the same three pointers and the free blocks count).
GROUP_DESC = struct.Struct("<IIIHHHH12x")
GROUP_DESC_HI = struct.Struct("<IIIH")
BG_CHECKSUM_OFFSET = 0x1E
BG_BLOCK_BITMAP_CSUM_LO = 0x18  # with metadata_csum: crc32c of the block bitmap (s_clusters_per_group / 8 bytes)
BG_BLOCK_BITMAP_CSUM_HI = 0x38  # its high half, where the descriptor is at least 0x3A bytes

STATE_ERROR_FS = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_SPARSE_SUPER2 = 0x0200
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_INLINE_DATA = 0x8000
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
BG_BLOCK_UNINIT = 0x0002

# Inode: the fields read here (the rest is dissect's business).
INODE_MODE = struct.Struct("<H")  # at 0x00
INODE_SIZE_LO = struct.Struct("<I")  # at 0x04; i_size_high at 0x6C
INODE_FLAGS = struct.Struct("<I")  # at 0x20
INODE_BLOCK_OFFSET = 0x28  # i_block[15], 60 bytes
INODE_BLOCK_SIZE = 60
INODE_EXTRA_ISIZE = struct.Struct("<H")  # at 0x80
EXT4_EXTENTS_FL = 0x00080000
EXT4_INLINE_DATA_FL = 0x10000000
EXT4_ENCRYPT_FL = 0x800  # fscrypt: names (of a directory) and data encrypted with a key kept elsewhere
N_DIRECT = 12  # i_block[0..11] are direct block pointers in a block map; 12, 13, 14 the indirect ones

# Extent tree (ifork.rst): a 12-byte header, then 12-byte leaves or index entries.
EXTENT_HEADER = struct.Struct("<HHHHI")  # eh_magic, eh_entries, eh_max, eh_depth, eh_generation
EXTENT_MAGIC = 0xF30A
EXTENT_LEAF = struct.Struct("<IHHI")  # ee_block, ee_len, ee_start_hi, ee_start_lo
EXTENT_INDEX = struct.Struct("<IIH2x")  # ei_block, ei_leaf_lo, ei_leaf_hi
EXTENT_INIT_MAX_LEN = 32768  # ee_len above this: an uninitialized (preallocated) extent of ee_len - 32768
EXTENT_MAX_DEPTH = 5  # the kernel's EXT4_MAX_EXTENT_DEPTH

DIRENT = struct.Struct("<IHBB")  # inode, rec_len, name_len, file_type (ext4_dir_entry_2)

# In-inode extended attributes (attributes.rst): a 4-byte magic after i_extra_isize, then entries;
# values are relative to the first entry.
XATTR_MAGIC = 0xEA020000
XATTR_ENTRY = struct.Struct("<BBHIII")  # e_name_len, e_name_index, e_value_offs, e_value_inum, e_value_size, hash
XATTR_INDEX_SYSTEM = 7
XATTR_ROUND = 4


def _crc_table(poly: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


CRC16 = _crc_table(0xA001)  # CRC-16/ANSI reflected; lib/crc16.c


def crc(table: list[int], value: int, data: bytes) -> int:
    for b in data:
        value = (value >> 8) ^ table[(value ^ b) & 0xFF]
    return value


# The inode's first 160 bytes (inodes.rst), field names as dissect.extfs's ``ext4_inode`` has them, so
# dissect's ``INode`` methods read our parse as they read theirs; at a tenth of the cost.
INODE = struct.Struct("<HHIIIIIHHIII60sIIIIHHHHHHHHIIIIIII")
INODE_FIELDS = (
    "i_mode", "i_uid", "i_size_lo", "i_atime", "i_ctime", "i_mtime", "i_dtime", "i_gid", "i_links_count",
    "i_blocks_lo", "i_flags", "i_reserved_1", "i_block", "i_generation", "i_file_acl_lo", "i_size_high",
    "i_obso_faddr", "i_blocks_high", "i_file_acl_high", "i_uid_high", "i_gid_high", "i_checksum_lo",
    "i_reserved", "i_extra_isize", "i_checksum_hi", "i_ctime_extra", "i_mtime_extra", "i_atime_extra",
    "i_crtime", "i_crtime_extra", "i_version_hi", "i_projid",
)


_namedtuple: Any = namedtuple  # fields from a tuple: beyond what mypy's namedtuple plugin reads
InodeFields: Any = _namedtuple("InodeFields", (*INODE_FIELDS, "i_extra"))


def parse_inode(raw: bytes) -> Any:
    """One inode's fields (plus ``i_extra``: dissect's view of the bytes after them); a 128-byte inode
    reads as if the rest were zero."""
    padded = raw[:256].ljust(256, b"\0")
    values = INODE.unpack_from(padded)
    extra_isize = values[-9] if len(raw) > 128 else 0
    return InodeFields(*values[:-9], extra_isize, *values[-8:],
                       padded[INODE.size : INODE.size + max(0, 256 - 128 - extra_isize)])
