"""XFS on-disk structures used by the allocation map (all big-endian; CRCs are crc32c, stored little-endian).

Spec: Linux ``fs/xfs/libxfs/xfs_format.h`` (``xfs_dsb``, ``xfs_agf``, ``xfs_btree_block``,
``xfs_alloc_rec``) and ``xfs_log_format.h`` (``xlog_rec_header``, ``xlog_op_header``); summary in
``shared/reference/xfs-btrfs-lvm.md`` §1.
"""

from __future__ import annotations

import struct

SB_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
# Free-space B+tree by block number: v4 and v5 (CRC) magics.
BNOBT_MAGIC = b"ABTB"
BNOBT_CRC_MAGIC = b"AB3B"

# Superblock (xfs_dsb) up to sb_meta_uuid; offsets in the comments.
SUPERBLOCK = struct.Struct(
    ">4sIQ"  # 0 magicnum, blocksize, dblocks
    "QQ16sQ"  # 16 rblocks, rextents, uuid, 48 logstart
    "QQQ"  # 56 rootino, rbmino, rsumino
    "IIIII"  # 80 rextsize, agblocks, agcount, rbmblocks, logblocks
    "HHHH12s"  # 100 versionnum, sectsize, inodesize, inopblock, fname
    "BBBBBBBB"  # 120 blocklog, sectlog, inodelog, inopblog, agblklog, rextslog, inprogress, imax_pct
    "QQQQ"  # 128 icount, ifree, fdblocks, frextents
    "QQHBB"  # 160 uquotino, gquotino, qflags, flags, shared_vn
    "III"  # 180 inoalignmt, unit, width
    "BBHI"  # 192 dirblklog, logsectlog, logsectsize, logsunit
    "II"  # 200 features2, bad_features2
    "IIII"  # 208 features_compat, features_ro_compat, features_incompat, features_log_incompat
    "4sI"  # 224 crc (little-endian bytes), spino_align
    "QQ16s"  # 232 pquotino, lsn, meta_uuid
)
SB_CRC_OFFSET = 224
VERSION_NUMBITS = 0x000F
VERSION_5 = 5
INCOMPAT_META_UUID = 0x0004
INCOMPAT_NEEDSREPAIR = 0x0010
INCOMPAT_KNOWN = 0x01FF  # ftype .. metadir (xfsprogs 6.13); anything above is refused

# AGF (sector 1 of each AG).
AGF = struct.Struct(
    ">4sIII"  # 0 magicnum, versionnum, seqno, length
    "III"  # 16 bno_root, cnt_root, rmap_root
    "III"  # 28 bno_level, cnt_level, rmap_level
    "IIIII"  # 40 flfirst, fllast, flcount, freeblks, longest
)
AGF_CRC_OFFSET = 216
AGF_UUID_OFFSET = 64

# Short-form B+tree block header: v4 is 16 bytes, v5 appends blkno, lsn, uuid, owner, crc (56 bytes).
SBLOCK = struct.Struct(">4sHHII")
SBLOCK_CRC = struct.Struct(">4sHHIIQQ16sI4s")
SBLOCK_CRC_OFFSET = 52
ALLOC_REC = struct.Struct(">II")  # startblock, blockcount (AG-relative)
ALLOC_KEY_SIZE = 8
ALLOC_PTR = struct.Struct(">I")
MAX_LEVELS = 9  # XFS_BTREE_MAXLEVELS

# Log (xfs_log_format.h).  The log is stamped in 512-byte basic blocks.
BBSIZE = 512
LOG_HEADER_MAGIC = 0xFEEDBABE
LOG_CYCLE_SIZE = 32 * 1024  # XLOG_HEADER_CYCLE_SIZE: data bytes one header block covers
LOG_VERSION_2 = 2
# xlog_rec_header: magicno, cycle, version, len, lsn, tail_lsn, crc, prev_block, num_logops, ...
LOG_REC_HEADER = struct.Struct(">IIiiQQIii")
LOG_REC_SIZE_OFFSET = 320  # h_size: the in-core log buffer size (v2 logs)
LOG_OP_FLAGS_OFFSET = 9  # xlog_op_header.oh_flags, after oh_tid, oh_len, oh_clientid
LOG_UNMOUNT_TRANS = 0x20
