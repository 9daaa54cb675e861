"""XFS extended attributes: an inode's attribute fork, read as Linux lists it (``fs/xfs/libxfs/xfs_da_format.h``,
``xfs_attr_sf.h``, ``xfs_acl.c``, ``xfs_xattr.c``).

The fork is short-form (in the inode), or a tree of ``sb_blocksize`` blocks mapped by extents (in the inode,
or a B+tree): one leaf (``0xfbee``, v5 ``0x3bee``) at attribute block 0, or a node (``0xfebe``/``0x3ebe``)
there whose leftmost path leads to the first leaf, the rest following it by their forward links.  Values
past a leaf's room are remote: blocks of their own, each with a ``XARM`` header on v5.  On v5 every
block must pass its CRC, as the kernel requires.

Names get the prefix of their namespace (none → ``user.``, ROOT → ``trusted.``, SECURE → ``security.``).
The POSIX ACLs kept as ``trusted.SGI_ACL_FILE``/``SGI_ACL_DEFAULT`` in XFS's own format become
``system.posix_acl_access``/``default`` in the kernel's xattr format, as ``getfattr`` shows them; the
SGI names themselves are left out, as ``cp -a`` leaves them out (``/etc/xattr.conf``).  Parent pointers
and entries whose creation did not complete (INCOMPLETE) are not listed, as the kernel does not list them.
Every count, offset and length is checked against its block; a value is at most 64 KiB (XATTR_SIZE_MAX).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator

from ..errors import CorruptImageError
from .xfs import checksum_ok

FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 1, 2, 3
ATTR_LOCAL, ATTR_ROOT, ATTR_SECURE, ATTR_PARENT, ATTR_INCOMPLETE = 0x01, 0x02, 0x04, 0x08, 0x80
LEAF_MAGICS = {4: 0xFBEE, 5: 0x3BEE}
NODE_MAGICS = {4: 0xFEBE, 5: 0x3EBE}
LEAF_HEADER = {4: 32, 5: 80}  # xfs_attr_leaf_hdr / xfs_attr3_leaf_hdr: the entries follow
NODE_HEADER = {4: 16, 5: 64}  # xfs_da_intnode / xfs_da3_intnode header: the (hash, before) pairs follow
COUNT_AT = {4: 12, 5: 56}  # the leaf's and the node's entry count (a node's level follows it)
RMT_HEADER = 56  # xfs_attr3_rmt_hdr, v5 only
RMT_MAGIC = b"XARM"
CRC_AT = 12  # v5: the CRC of every attribute block (leaf, node and remote headers alike)
BLKINFO = struct.Struct(">IIH")  # forw, back, magic
LEAF_ENTRY = struct.Struct(">IHBx")  # hashval, nameidx, flags
LOCAL_NAME = struct.Struct(">HB")  # valuelen, namelen; name and value follow
REMOTE_NAME = struct.Struct(">IIB")  # valueblk, valuelen, namelen; the name follows
SF_HEADER = struct.Struct(">HBx")  # totsize, count
SF_ENTRY = struct.Struct(">BBB")  # namelen, valuelen, flags
ACL_ENTRY = struct.Struct(">IIHxx")  # tag, id, perm (struct xfs_acl_entry)
XATTR_SIZE_MAX = 65536
MAX_LEVEL = 5  # XFS_DA_NODE_MAXDEPTH
ACLS = {b"SGI_ACL_FILE": "system.posix_acl_access", b"SGI_ACL_DEFAULT": "system.posix_acl_default"}
ACL_UNDEFINED_ID = 0xFFFFFFFF
ACL_USER, ACL_GROUP = 0x02, 0x08  # the tags whose id means something

Mapped = Callable[[int], int | None]  # attribute block → volume byte offset (None: a hole)
Attr = tuple[int, bytes, bytes]  # flags, name, value


def listed(attrs: Iterable[Attr], what: str) -> list[tuple[str, bytes]]:
    """Attributes as Linux lists them: prefixed names, ACLs converted, hidden ones left out."""
    out: list[tuple[str, bytes]] = []
    for flags, name, value in attrs:
        if flags & (ATTR_INCOMPLETE | ATTR_PARENT):
            continue
        if flags & ATTR_ROOT and name in ACLS:
            out.append((ACLS[name], posix_acl(value, f"{what}: trusted.{name.decode()}")))
            continue
        prefix = "trusted." if flags & ATTR_ROOT else "security." if flags & ATTR_SECURE else "user."
        out.append((prefix + name.decode("utf-8", "surrogateescape"), value))
    return out


def posix_acl(value: bytes, what: str) -> bytes:
    """XFS's on-disk ACL (big-endian count, then tag, id, perm) → the kernel's xattr format (version 2,
    then little-endian tag, perm, id)."""
    if len(value) < 4:
        raise CorruptImageError(f"{what} holds {len(value)} bytes")
    (count,) = struct.unpack_from(">I", value)
    if len(value) != 4 + count * ACL_ENTRY.size:
        raise CorruptImageError(f"{what} claims {count} entries in {len(value)} bytes")
    out = bytearray(struct.pack("<I", 2))
    for i in range(count):
        tag, ident, perm = ACL_ENTRY.unpack_from(value, 4 + i * ACL_ENTRY.size)
        out += struct.pack("<HHI", tag, perm, ident if tag in (ACL_USER, ACL_GROUP) else ACL_UNDEFINED_ID)
    return bytes(out)


def shortform(fork: bytes, what: str) -> Iterator[Attr]:
    if len(fork) < SF_HEADER.size:
        raise CorruptImageError(f"{what}: the short-form attribute header is truncated")
    total, count = SF_HEADER.unpack_from(fork)
    if total > len(fork):
        raise CorruptImageError(f"{what}: the short-form attributes claim {total} bytes in a fork of {len(fork)}")
    pos = SF_HEADER.size
    for i in range(count):
        if pos + SF_ENTRY.size > total:
            raise CorruptImageError(f"{what}: short-form attribute {i} lies past the fork's {total} bytes")
        namelen, valuelen, flags = SF_ENTRY.unpack_from(fork, pos)
        start = pos + SF_ENTRY.size
        end = start + namelen + valuelen
        if not namelen or end > total:
            raise CorruptImageError(f"{what}: short-form attribute {i} ({namelen}-byte name, {valuelen}-byte value) "
                                    f"runs past the fork's {total} bytes")
        yield flags, fork[start : start + namelen], fork[start + namelen : end]
        pos = end


class AttrTree:
    """The block form of one inode's attribute fork, reached through ``mapped``."""

    def __init__(self, read: Callable[[int, int], bytes], mapped: Mapped, block_size: int, version: int,
                 what: str) -> None:
        self.read, self.mapped, self.bs, self.version, self.what = read, mapped, block_size, version, what

    def _block(self, dablk: int) -> bytes:
        at = self.mapped(dablk)
        if at is None:
            raise CorruptImageError(f"{self.what}: attribute block {dablk} is not mapped")
        block = self.read(at, self.bs)
        if self.version == 5 and not checksum_ok(block, CRC_AT):  # the kernel refuses such a block
            raise CorruptImageError(f"{self.what}: attribute block {dablk} fails its checksum")
        return block

    def attrs(self) -> Iterator[Attr]:
        dablk = 0
        block = self._block(0)
        for _ in range(MAX_LEVEL):
            magic = BLKINFO.unpack_from(block)[2]
            if magic != NODE_MAGICS[self.version]:
                break
            count, level = struct.unpack_from(">HH", block, COUNT_AT[self.version])
            if not count or not 1 <= level <= MAX_LEVEL:
                raise CorruptImageError(f"{self.what}: attribute node block {dablk} has {count} entries at level "
                                        f"{level}")
            dablk = struct.unpack_from(">I", block, NODE_HEADER[self.version] + 4)[0]  # the first entry's before
            block = self._block(dablk)
        seen: set[int] = set()
        while True:
            forw, _back, magic = BLKINFO.unpack_from(block)
            if magic != LEAF_MAGICS[self.version]:
                raise CorruptImageError(f"{self.what}: attribute block {dablk} has magic {magic:#06x}, not a leaf's")
            seen.add(dablk)
            yield from self._leaf(block, dablk)
            if not forw:
                return
            if forw in seen or len(seen) > 1 << 20:
                raise CorruptImageError(f"{self.what}: attribute leaf {dablk} links back to leaf {forw}")
            dablk = forw
            block = self._block(dablk)

    def _leaf(self, block: bytes, dablk: int) -> Iterator[Attr]:
        where = f"{self.what}: attribute leaf {dablk}"
        (count,) = struct.unpack_from(">H", block, COUNT_AT[self.version])
        first = LEAF_HEADER[self.version]
        if first + count * LEAF_ENTRY.size > self.bs:
            raise CorruptImageError(f"{where} claims {count} entries")
        for i in range(count):
            _hash, nameidx, flags = LEAF_ENTRY.unpack_from(block, first + i * LEAF_ENTRY.size)
            if flags & ATTR_LOCAL:
                if nameidx + LOCAL_NAME.size > self.bs:
                    raise CorruptImageError(f"{where}: entry {i} points past the block")
                valuelen, namelen = LOCAL_NAME.unpack_from(block, nameidx)
                start = nameidx + LOCAL_NAME.size
                if not namelen or start + namelen + valuelen > self.bs:
                    raise CorruptImageError(f"{where}: entry {i} runs past the block")
                yield flags, block[start : start + namelen], block[start + namelen : start + namelen + valuelen]
                continue
            if nameidx + REMOTE_NAME.size > self.bs:
                raise CorruptImageError(f"{where}: entry {i} points past the block")
            valueblk, valuelen, namelen = REMOTE_NAME.unpack_from(block, nameidx)
            start = nameidx + REMOTE_NAME.size
            if not namelen or start + namelen > self.bs or valuelen > XATTR_SIZE_MAX:
                raise CorruptImageError(f"{where}: entry {i} has a {namelen}-byte name and a {valuelen}-byte value")
            name = block[start : start + namelen]
            if flags & ATTR_INCOMPLETE:
                continue  # its value may never have been written
            yield flags, name, self._remote(valueblk, valuelen, f"{where}: the value of entry {i}")

    def _remote(self, dablk: int, length: int, where: str) -> bytes:
        out = bytearray()
        per = self.bs - (RMT_HEADER if self.version == 5 else 0)
        while len(out) < length:
            block = self._block(dablk)
            if self.version == 5:
                magic, offset, size = struct.unpack_from(">4sII", block)
                take = min(per, length - len(out))
                if magic != RMT_MAGIC or offset != len(out) or size != take:
                    raise CorruptImageError(f"{where}: remote block {dablk} has magic {magic!r}, offset {offset} and "
                                            f"{size} bytes (expected {len(out)} and {take})")
                out += block[RMT_HEADER : RMT_HEADER + take]
            else:
                out += block[: length - len(out)]
            dablk += 1
        return bytes(out)
