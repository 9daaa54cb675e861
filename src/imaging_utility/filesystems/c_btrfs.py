"""Btrfs on-disk structures used by the allocation map and the file tree (all little-endian).

Spec: Linux ``include/uapi/linux/btrfs_tree.h`` (keys, ``btrfs_header``, ``btrfs_item``,
``btrfs_key_ptr``, ``btrfs_chunk``, ``btrfs_stripe``, ``btrfs_root_item``,
``btrfs_block_group_item``) and ``fs/btrfs/fs.h`` / ``disk-io.c`` (superblock, mirrors,
checksums); summary in ``shared/reference/xfs-btrfs-lvm.md`` §2.
"""

from __future__ import annotations

import struct

SUPER_OFFSET = 64 * 1024
SUPER_SIZE = 4096
SUPER_MIRRORS = (64 * 1024, 64 << 20, 256 << 30, 1 << 50)  # primary, then copies at 64 MiB, 256 GiB, 1 PiB
MAGIC = b"_BHRfS_M"
CSUM_SIZE = 32
RESERVED_START = 1 << 20  # btrfs never allocates the first MiB (boot loaders, the primary superblock)

# Superblock fields at 32..211 (csum is the first 32 bytes).
SUPERBLOCK = struct.Struct(
    "<16sQQ8sQ"  # 32 fsid, bytenr, flags, magic, generation
    "QQQQ"  # 80 root, chunk_root, log_root, (unused) log_root_transid
    "QQQQ"  # 112 total_bytes, bytes_used, root_dir_objectid, num_devices
    "IIII"  # 144 sectorsize, nodesize, (unused) leafsize, stripesize
    "IQ"  # 160 sys_chunk_array_size, chunk_root_generation
    "QQQ"  # 172 compat_flags, compat_ro_flags, incompat_flags
    "HBBB"  # 196 csum_type, root_level, chunk_root_level, log_root_level
    "QQ"  # 201 dev_item.devid, dev_item.total_bytes
)
SUPERBLOCK_OFFSET = 32
LABEL_OFFSET = 299
LABEL_SIZE = 256
METADATA_UUID_OFFSET = 571
SYS_CHUNK_ARRAY_OFFSET = 811
SYS_CHUNK_ARRAY_SIZE = 2048

CSUM_CRC32C, CSUM_XXHASH, CSUM_SHA256, CSUM_BLAKE2 = 0, 1, 2, 3
INCOMPAT_MIXED_GROUPS = 1 << 2
INCOMPAT_RAID56 = 1 << 7
INCOMPAT_SKINNY_METADATA = 1 << 8
INCOMPAT_METADATA_UUID = 1 << 10
INCOMPAT_RAID1C34 = 1 << 11
INCOMPAT_ZONED = 1 << 12
INCOMPAT_EXTENT_TREE_V2 = 1 << 13
COMPAT_RO_BLOCK_GROUP_TREE = 1 << 3

# Tree block header (101 bytes): csum, fsid, bytenr, flags, chunk_tree_uuid, generation, owner, nritems, level.
HEADER = struct.Struct("<32s16sQQ16sQQIB")
KEY = struct.Struct("<QBQ")  # objectid, type, offset
ITEM = struct.Struct("<QBQII")  # key, data offset (from the end of the header), data size
KEY_PTR = struct.Struct("<QBQQQ")  # key, blockptr (logical), generation

# Key types.
INODE_ITEM = 1
EXTENT_DATA = 108
EXTENT_ITEM = 168
METADATA_ITEM = 169
BLOCK_GROUP_ITEM = 192
DEV_EXTENT = 204
CHUNK_ITEM = 228
ROOT_ITEM = 132

# Tree object ids.
ROOT_TREE = 1
EXTENT_TREE = 2
CHUNK_TREE = 3
FS_TREE = 5
BLOCK_GROUP_TREE = 11
FIRST_CHUNK_TREE_OBJECTID = 256

# Chunk item: length, owner, stripe_len, type, io_align, io_width, sector_size, num_stripes, sub_stripes;
# then num_stripes stripes of (devid, offset, dev_uuid).
CHUNK = struct.Struct("<QQQQIIIHH")
STRIPE = struct.Struct("<QQ16s")
BLOCK_GROUP_DATA = 1 << 0
BLOCK_GROUP_SYSTEM = 1 << 1
BLOCK_GROUP_METADATA = 1 << 2
BLOCK_GROUP_DUP = 1 << 5
BLOCK_GROUP_PROFILES = 0x7F8  # raid0 raid1 dup raid10 raid5 raid6 raid1c3 raid1c4

BLOCK_GROUP = struct.Struct("<QQQ")  # used, chunk_objectid, flags
ROOT_ITEM_BYTENR_OFFSET = 176
ROOT_ITEM_LEVEL_OFFSET = 238
MAX_LEVEL = 7  # BTRFS_MAX_LEVEL - 1

# File extent item (in an fs tree, key (inode, EXTENT_DATA, file offset)).
FILE_EXTENT = struct.Struct("<QQBBHB")  # generation, ram_bytes, compression, encryption, other_encoding, type
FILE_EXTENT_REG = struct.Struct("<QQQQ")  # disk_bytenr, disk_num_bytes, offset, num_bytes (at 21)
FILE_EXTENT_INLINE, FILE_EXTENT_REGULAR, FILE_EXTENT_PREALLOC = 0, 1, 2
# btrfs_dir_item (as an XATTR_ITEM): location key (17 bytes) and transid, then data_len, name_len and type;
# the name and then the value follow
DIR_ITEM = struct.Struct("<25xHHx")
