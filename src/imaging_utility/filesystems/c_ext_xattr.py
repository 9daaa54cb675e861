"""ext2/3/4 extended attributes and POSIX ACLs on disk, and the Linux xattr form of an ACL.

Spec: Linux ``Documentation/filesystems/ext4/attributes.rst`` (in-inode area after ``i_extra_isize``
and the external block ``i_file_acl``: ``ext4_xattr_header``/``ext4_xattr_ibody_header``,
``ext4_xattr_entry``), ``fs/ext4/acl.h`` (the on-disk ACL, version 1, short entries for the
owner/group/mask/other tags) and ``include/uapi/linux/posix_acl_xattr.h`` (the xattr form, version 2,
every entry 8 bytes, ``e_id`` 0xFFFFFFFF where it does not apply).
"""

from __future__ import annotations

import struct

XATTR_MAGIC = 0xEA020000
IBODY_HEADER = struct.Struct("<I")  # h_magic
BLOCK_HEADER = struct.Struct("<IIIII12x")  # h_magic, h_refcount, h_blocks, h_hash, h_checksum, reserved
ENTRY = struct.Struct("<BBHIII")  # e_name_len, e_name_index, e_value_offs, e_value_inum, e_value_size, e_hash
ENTRY_ROUND = 4  # entries and values are padded to 4 bytes
XATTR_SIZE_MAX = 65536  # largest value Linux accepts (include/uapi/linux/limits.h)

# e_name_index -> the Linux prefix; indexes not here (lustre, system.data of inline data, richacl,
# encryption context, hurd) are not visible through the Linux xattr interface and are not restored.
INDEX_PREFIX = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default", 4: "trusted.",
                6: "security."}
INDEX_ACL = (2, 3)

EXT4_ACL_VERSION = 1
ACL_XATTR_VERSION = 2
ACL_HEADER = struct.Struct("<I")
ACL_ENTRY = struct.Struct("<HHI")  # e_tag, e_perm, e_id
ACL_ENTRY_SHORT = struct.Struct("<HH")
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
