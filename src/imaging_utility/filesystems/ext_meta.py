"""POSIX metadata of ext2/3/4 inodes beyond the tree's basic fields: owners with their
high 16 bits, device numbers, and extended attributes (in the inode and in the ``i_file_acl`` block)
with POSIX ACLs converted to the form Linux's xattr calls take.

Values are claims of the image: every offset and size is checked against the inode or the block that
holds it, and a value is at most ``XATTR_SIZE_MAX`` bytes, so a hostile inode costs no more than one
block of memory per attribute.  Spec references in ``c_ext_xattr.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CorruptImageError
from . import c_ext_xattr as c

if TYPE_CHECKING:
    from .ext_inode import ExtVolume

GOOD_OLD_INODE_SIZE = 128


def owner(node: Any) -> tuple[int, int]:
    """(uid, gid) with their high 16 bits (``osd2.l_i_uid_high``/``l_i_gid_high``)."""
    ino = node.inode
    return int(ino.i_uid) | int(ino.i_uid_high) << 16, int(ino.i_gid) | int(ino.i_gid_high) << 16


def device(node: Any) -> int:
    """The device number of a char/block inode: ``i_block[0]`` in the old 8:8 encoding when it is set,
    else ``i_block[1]`` in the new 12:20 one (Linux ``ext4_iget``)."""
    raw = bytes(node.inode.i_block)
    old, new = int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little")
    if old:
        return os.makedev((old >> 8) & 0xFF, old & 0xFF)
    return os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))


def xattrs(vol: ExtVolume, raw: bytes, inum: int, read_value: Callable[[int, int], bytes]) -> list[tuple[str, bytes]]:
    """The extended attributes of inode ``inum`` (its bytes ``raw``, as ``vol`` read them) under their Linux
    names, in-inode ones first; ``read_value(inode, size)`` reads a value kept as another inode's data."""
    label = f"inode {inum}"
    out: list[tuple[str, bytes]] = []
    if len(raw) > GOOD_OLD_INODE_SIZE + 4:
        extra = int.from_bytes(raw[128:130], "little")
        start = GOOD_OLD_INODE_SIZE + extra
        if extra % 4 == 0 and start + c.IBODY_HEADER.size <= len(raw):
            (magic,) = c.IBODY_HEADER.unpack_from(raw, start)
            if magic == c.XATTR_MAGIC:
                body = raw[start + c.IBODY_HEADER.size :]
                out += _entries(read_value, body, 0, body, label + " (in-inode attributes)")
    block = int.from_bytes(raw[0x68:0x6C], "little") | int.from_bytes(raw[0x76:0x78], "little") << 32
    if block:
        vol.check_run(inum, block, 1, "its attribute block")
        data = vol.read_block(block)
        magic, _refs, blocks, _hash, _sum = c.BLOCK_HEADER.unpack_from(data)
        if magic != c.XATTR_MAGIC or blocks != 1:
            raise CorruptImageError(f"{label}: attribute block {block} has magic {magic:#x} and {blocks} blocks "
                                    f"(expected {c.XATTR_MAGIC:#x} and 1)")
        out += _entries(read_value, data, c.BLOCK_HEADER.size, data, f"{label} (attribute block {block})")
    return out


def _entries(read_value: Callable[[int, int], bytes], area: bytes, pos: int, values: bytes,
             label: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    while pos + 4 <= len(area) and area[pos : pos + 4] != b"\0\0\0\0":
        if pos + c.ENTRY.size > len(area):
            raise CorruptImageError(f"{label}: entry at byte {pos} runs past the end")
        name_len, index, voff, vinum, vsize, _hash = c.ENTRY.unpack_from(area, pos)
        name = area[pos + c.ENTRY.size : pos + c.ENTRY.size + name_len]
        if len(name) != name_len:
            raise CorruptImageError(f"{label}: entry name at byte {pos} runs past the end")
        pos += (c.ENTRY.size + name_len + c.ENTRY_ROUND - 1) & ~(c.ENTRY_ROUND - 1)
        prefix = c.INDEX_PREFIX.get(index)
        if prefix is None:  # system.data (inline data) and other kinds Linux does not list
            continue
        if vsize > c.XATTR_SIZE_MAX:
            raise CorruptImageError(f"{label}: a value claims {vsize} bytes (at most {c.XATTR_SIZE_MAX})")
        # ea_inode: a value kept as the data of another inode
        value = read_value(vinum, vsize) if vinum else values[voff : voff + vsize]
        if len(value) != vsize:
            raise CorruptImageError(f"{label}: a value of {vsize} bytes at {voff} runs past the end")
        if index in c.INDEX_ACL:
            out.append((prefix, acl_to_xattr(value, label)))
        else:
            out.append((prefix + name.decode("utf-8", "surrogateescape"), value))
    return out


def acl_to_xattr(value: bytes, label: str) -> bytes:
    """An ext4 on-disk ACL (version 1, short entries for owner/group-owner/mask/other) in the Linux
    ``system.posix_acl_*`` xattr form (version 2, 8-byte entries)."""
    if len(value) < c.ACL_HEADER.size or c.ACL_HEADER.unpack_from(value)[0] != c.EXT4_ACL_VERSION:
        raise CorruptImageError(f"{label}: POSIX ACL with an unknown version")
    out = bytearray(c.ACL_HEADER.pack(c.ACL_XATTR_VERSION))
    pos = c.ACL_HEADER.size
    while pos < len(value):
        if pos + c.ACL_ENTRY_SHORT.size > len(value):
            raise CorruptImageError(f"{label}: POSIX ACL entry at byte {pos} is cut short")
        tag, perm = c.ACL_ENTRY_SHORT.unpack_from(value, pos)
        if tag in (c.ACL_USER, c.ACL_GROUP):
            if pos + c.ACL_ENTRY.size > len(value):
                raise CorruptImageError(f"{label}: POSIX ACL entry at byte {pos} is cut short")
            _t, _p, ident = c.ACL_ENTRY.unpack_from(value, pos)
            pos += c.ACL_ENTRY.size
        elif tag in (c.ACL_USER_OBJ, c.ACL_GROUP_OBJ, c.ACL_MASK, c.ACL_OTHER):
            ident = c.ACL_UNDEFINED_ID
            pos += c.ACL_ENTRY_SHORT.size
        else:
            raise CorruptImageError(f"{label}: POSIX ACL entry with unknown tag {tag:#x}")
        out += c.ACL_ENTRY.pack(tag, perm, ident)
    return bytes(out)


def map_acl_ids(value: bytes, users: dict[int, int], groups: dict[int, int]) -> bytes:
    """A Linux-form ACL with its named users and groups mapped (``--map-owner``/``--map-group``)."""
    if len(value) < c.ACL_HEADER.size or (len(value) - c.ACL_HEADER.size) % c.ACL_ENTRY.size:
        return value
    out = bytearray(value[: c.ACL_HEADER.size])
    for tag, perm, ident in c.ACL_ENTRY.iter_unpack(value[c.ACL_HEADER.size :]):
        if tag == c.ACL_USER:
            ident = users.get(ident, ident)
        elif tag == c.ACL_GROUP:
            ident = groups.get(ident, ident)
        out += c.ACL_ENTRY.pack(tag, perm, ident)
    return bytes(out)
