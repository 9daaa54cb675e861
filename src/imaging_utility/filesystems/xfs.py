"""XFS (v4 and v5): used blocks from the free-space B+trees of every allocation group.

Spec: Linux ``fs/xfs/libxfs/xfs_format.h`` and ``xfs_alloc_btree.c``, as summarised in
``shared/reference/xfs-btrfs-lvm.md`` §1.  Each allocation group (AG) keeps its free extents in
the by-block-number B+tree (bnobt) rooted in its AGF; everything else in the AG is in use (AG
headers, inode chunks, every B+tree, the internal log, the AGFL, file data).  So the used set
is each AG minus its bnobt records, and the records must add up to ``agf_freeblks``.

What is refused (``UnsupportedError``): a damaged superblock or AGF, a bnobt block with a bad
magic, level, owner or CRC (v5), a B+tree loop, records out of order or past the AG, a log that
is not clean (mounted, or not cleanly unmounted: the on-disk B+trees may be behind the log), an
external log (its state cannot be checked), and ``needsrepair``.  Every block read is bounded.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..blocks import BlockSource, read_at
from ..crc32c import crc32c
from ..errors import UnsupportedError
from . import c_xfs as c

_HINT = "image it in full without --used-only"


def _fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"XFS superblock found but {what}; {_HINT}")


def _pow2(n: int, lo: int, hi: int) -> bool:
    return lo <= n <= hi and not n & (n - 1)


def checksum_ok(data: bytes | bytearray | memoryview, crc_offset: int) -> bool:
    """XFS metadata CRC: crc32c of the buffer with the CRC field zeroed, stored little-endian."""
    stored = bytes(data[crc_offset : crc_offset + 4])
    crc = crc32c(bytes(data[:crc_offset]) + b"\0\0\0\0" + bytes(data[crc_offset + 4 :]))
    return crc.to_bytes(4, "little") == stored


@dataclass(frozen=True)
class XfsSuper:
    blocksize: int
    dblocks: int
    uuid: bytes
    logstart: int
    agblocks: int
    agcount: int
    logblocks: int
    version: int
    sectsize: int
    fname: bytes
    blocklog: int
    agblklog: int
    inprogress: int
    fdblocks: int
    incompat: int
    meta_uuid: bytes
    logsectsize: int

    @classmethod
    def from_bytes(cls, data: bytes) -> XfsSuper | None:
        """Parse the primary superblock (one sector); ``None`` without the magic, ``UnsupportedError``
        when it is damaged."""
        if len(data) < c.SUPERBLOCK.size or data[:4] != c.SB_MAGIC:
            return None
        (_, bs, dblocks, _, _, fs_uuid, logstart, _, _, _, _, agblocks, agcount, _, logblocks, versionnum,
         sectsize, inodesize, _, fname, blocklog, sectlog, _, _, agblklog, _, inprogress, _, _, _, fdblocks,
         _, _, _, _, _, _, _, _, _, _, _, logsectsize, _, _, _, _, _, incompat, _, _, _, _, _,
         meta_uuid) = c.SUPERBLOCK.unpack_from(data)
        version = versionnum & c.VERSION_NUMBITS
        bad = None
        if version not in (4, 5):
            bad = f"version {version}"
        elif not _pow2(bs, 512, 65536) or 1 << blocklog != bs:
            bad = f"block size {bs} (log {blocklog})"
        elif not _pow2(sectsize, 512, 32768) or 1 << sectlog != sectsize or sectsize > bs:
            bad = f"sector size {sectsize} (log {sectlog})"
        elif not _pow2(inodesize, 256, 2048):
            bad = f"inode size {inodesize}"
        elif agcount < 1 or agblocks < 64 or agblocks > 1 << 31 or (agblocks - 1).bit_length() != agblklog:
            bad = f"agcount {agcount}, agblocks {agblocks}, agblklog {agblklog}"
        elif not (agcount - 1) * agblocks < dblocks <= agcount * agblocks:
            bad = f"dblocks {dblocks} does not fit {agcount} AGs of {agblocks} blocks"
        elif logstart and (logblocks < 1 or logstart >> agblklog >= agcount
                           or (logstart & ((1 << agblklog) - 1)) + logblocks > agblocks):
            bad = f"log at block {logstart:#x} of {logblocks} blocks"
        elif version == 5 and len(data) >= sectsize and not checksum_ok(data[:sectsize], c.SB_CRC_OFFSET):
            bad = "superblock CRC mismatch"
        if bad:
            raise UnsupportedError(f"XFS superblock at offset 0 is damaged: {bad}")
        return cls(bs, dblocks, fs_uuid, logstart, agblocks, agcount, logblocks, version, sectsize, fname,
                   blocklog, agblklog, inprogress, fdblocks, incompat if version == 5 else 0, meta_uuid,
                   logsectsize or 512)

    @property
    def crc(self) -> bool:
        return self.version == 5

    @property
    def volume_size(self) -> int:
        return self.dblocks * self.blocksize

    @property
    def label(self) -> str | None:
        name = self.fname.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name or None

    @property
    def serial(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    @property
    def metadata_uuid(self) -> bytes:
        return self.meta_uuid if self.incompat & c.INCOMPAT_META_UUID else self.uuid

    def ag_length(self, agno: int) -> int:
        if agno == self.agcount - 1:
            return self.dblocks - agno * self.agblocks
        return self.agblocks

    def fsb_offset(self, fsb: int) -> int:
        """Byte offset of a filesystem block number (``agno << agblklog | agbno``, not linear)."""
        agno, agbno = fsb >> self.agblklog, fsb & ((1 << self.agblklog) - 1)
        return (agno * self.agblocks + agbno) * self.blocksize


def probe(source: BlockSource) -> XfsSuper | None:
    if source.size < 4096:
        return None
    head = read_at(source, 0, 512)
    if head[:4] != c.SB_MAGIC:
        return None
    sectsize = int.from_bytes(head[102:104], "big")
    if 512 < sectsize <= 32768 and sectsize <= source.size:
        head = read_at(source, 0, sectsize)
    return XfsSuper.from_bytes(head)


def _read_agf(source: BlockSource, sb: XfsSuper, agno: int) -> tuple[int, int, int, int]:
    """(bno root, bno levels, freeblks, length) of AG ``agno``'s AGF, validated."""
    off = agno * sb.agblocks * sb.blocksize + sb.sectsize
    data = read_at(source, off, sb.sectsize)
    if len(data) < sb.sectsize:
        raise _fail(f"the AGF of AG {agno} at offset {off:#x} lies past the end of the source")
    magic, _, seqno, length, bno_root, _, _, bno_level, _, _, _, _, flcount, freeblks, _ = c.AGF.unpack_from(data)
    bad = None
    if magic != c.AGF_MAGIC:
        bad = f"magic {magic!r}"
    elif seqno != agno or length != sb.ag_length(agno):
        bad = f"seqno {seqno}, length {length} (expected {agno}, {sb.ag_length(agno)})"
    elif not 1 <= bno_level <= c.MAX_LEVELS or not 0 < bno_root < length:
        bad = f"bnobt root {bno_root} level {bno_level}"
    elif freeblks > length or flcount > length:
        bad = f"freeblks {freeblks}, flcount {flcount}"
    elif sb.crc and not checksum_ok(data, c.AGF_CRC_OFFSET):
        bad = "CRC mismatch"
    elif sb.crc and data[c.AGF_UUID_OFFSET : c.AGF_UUID_OFFSET + 16] != sb.metadata_uuid:
        bad = "filesystem UUID differs from the superblock's"
    if bad:
        raise _fail(f"the AGF of AG {agno} at offset {off:#x} is damaged: {bad}")
    return bno_root, bno_level, freeblks, length


def _free_extents(source: BlockSource, sb: XfsSuper, agno: int, root: int, levels: int,
                  length: int) -> Iterator[tuple[int, int]]:
    """The bnobt leaf records of one AG in key order, every block checked; a loop or a
    block visited twice is an error."""
    bs = sb.blocksize
    hdr = c.SBLOCK_CRC.size if sb.crc else c.SBLOCK.size
    magic = c.BNOBT_CRC_MAGIC if sb.crc else c.BNOBT_MAGIC
    leaf_max = (bs - hdr) // c.ALLOC_REC.size
    node_max = (bs - hdr) // (c.ALLOC_KEY_SIZE + c.ALLOC_PTR.size)
    ag_base = agno * sb.agblocks
    buf = bytearray(bs)
    view = memoryview(buf)
    seen: set[int] = set()
    stack: list[tuple[int, int]] = [(root, levels - 1)]
    while stack:
        agbno, level = stack.pop()
        off = (ag_base + agbno) * bs
        where = f"bnobt block {agbno} of AG {agno} at offset {off:#x}"
        if agbno in seen:
            raise _fail(f"the free-space B+tree of AG {agno} loops ({where} is reached twice)")
        seen.add(agbno)
        if off + bs > source.size:
            raise _fail(f"{where} lies past the end of the source")
        source.readinto_at(off, view)
        got_magic, got_level, numrecs = c.SBLOCK.unpack_from(buf)[:3]
        bad = None
        if got_magic != magic:
            bad = f"magic {got_magic!r} (expected {magic!r})"
        elif got_level != level:
            bad = f"level {got_level} (expected {level})"
        elif numrecs > (node_max if level else leaf_max) or (level and not numrecs):
            bad = f"{numrecs} records"
        elif sb.crc:
            blkno, owner = c.SBLOCK_CRC.unpack_from(buf)[5], c.SBLOCK_CRC.unpack_from(buf)[8]
            if not checksum_ok(buf, c.SBLOCK_CRC_OFFSET):
                bad = "CRC mismatch"
            elif blkno != off // 512 or owner != agno:
                bad = f"blkno {blkno} / owner {owner} (expected {off // 512} / {agno})"
        if bad:
            raise _fail(f"{where} is damaged: {bad}")
        if level == 0:
            for i in range(numrecs):
                yield c.ALLOC_REC.unpack_from(buf, hdr + i * c.ALLOC_REC.size)
            continue
        ptr_base = hdr + node_max * c.ALLOC_KEY_SIZE
        children = [c.ALLOC_PTR.unpack_from(buf, ptr_base + 4 * i)[0] for i in range(numrecs)]
        for child in children:
            if not 0 < child < length:
                raise _fail(f"{where} points to block {child}, outside the AG")
        stack.extend((child, level - 1) for child in reversed(children))


def used_ranges(source: BlockSource, sb: XfsSuper) -> Iterator[tuple[int, int]]:
    """Each AG minus its free extents, in bytes; the internal log must be clean."""
    from .xfs_log import log_state

    if sb.inprogress:
        raise _fail("mkfs did not finish on it (sb_inprogress is set)")
    if sb.incompat & c.INCOMPAT_NEEDSREPAIR:
        raise _fail("it is marked as needing repair (run xfs_repair)")
    if sb.incompat & ~c.INCOMPAT_KNOWN:
        raise _fail(f"it has unknown incompatible features {sb.incompat & ~c.INCOMPAT_KNOWN:#x}")
    if not sb.logstart:
        raise _fail("its log is on an external device (its state cannot be checked)")
    dirty = log_state(source, sb)
    if dirty:
        raise _fail(dirty)
    bs = sb.blocksize
    for agno in range(sb.agcount):
        root, levels, freeblks, length = _read_agf(source, sb, agno)
        base = agno * sb.agblocks * bs
        pos = total = 0
        for start, count in _free_extents(source, sb, agno, root, levels, length):
            if count == 0 or start < pos or start + count > length:
                raise _fail(f"the free-space B+tree of AG {agno} has a bad record ({start}, {count}) "
                            f"after block {pos}")
            if start > pos:
                yield base + pos * bs, (start - pos) * bs
            pos = start + count
            total += count
        if pos < length:
            yield base + pos * bs, (length - pos) * bs
        if total != freeblks:
            raise _fail(f"the free-space B+tree of AG {agno} holds {total} free blocks but its AGF "
                        f"says {freeblks}")
