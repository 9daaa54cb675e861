"""Linux MD (software RAID) members: a RAID-1 member is mapped through its data area, any other level is
kept in full, with one line saying why.

Spec: the kernel's ``include/uapi/linux/raid/md_p.h`` and mdadm's ``super0.c``/``super1.c``.  Where the
superblock lives, by metadata version:

- 1.1 at byte 0 and 1.2 at byte 4096 of the member; 1.0 at ``((sectors - 16) & ~7) * 512``, near the end.
  ``struct mdp_superblock_1``, little-endian: magic 0xa92b4efc, major version 1, the feature map, the set's
  UUID and name, ``level`` (signed: -1 linear, 0, 1, 4, 5, 6, 10), ``raid_disks``, then this device's
  ``data_offset``/``data_size``/``super_offset`` in sectors, ``dev_number``, the checksum at 216 and
  ``max_dev``; the role of each device (``dev_roles``, 16 bits each, 0xffff spare, 0xfffe faulty) from 256.
  The checksum is the 32-bit words of the first 256 + 2 × ``max_dev`` bytes summed into 64 bits (itself as
  zero), its two halves added.
- 0.90 at ``(bytes & ~65535) - 65536``, in the byte order of the machine that wrote it: 1024 32-bit words,
  magic, major 0, minor 90, ``level`` word 7, ``raid_disks`` word 10, the checksum word 38 (the same sum over
  all 4096 bytes), this device's descriptor at word 992 (its ``state``: bit 1 active, bit 2 in sync).  Data
  runs from byte 0 to the superblock.

A RAID-1 member holds the whole array in its data area, so the filesystem there (any this program maps,
LVM2 included) gives the member's map, with everything outside the data area kept (superblock, write-intent
bitmap, bad-block log).  With 0.90 and 1.0 that filesystem starts at byte 0 of the member and would be
found there on its own; the superblock at the end comes first, because on a striped level (0, 4, 5, 6, 10)
or a linear array the filesystem found at byte 0 is the array's, not the member's: its bitmaps would map
array offsets onto this member's bytes, and used-only would drop data.  Spares, faulty members and members
being rebuilt (1.x: the recovery-offset feature; 0.90: active but not in sync) hold no or only part of the
array's data: kept in full.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..blocks import BlockSource, WindowSource, read_at
from ..errors import SourceIOError, UnsupportedError

MAGIC = 0xA92B4EFC
_SB1_SIZE = 256
_SB1_MAX_DEV = 1920  # what fits in the 4 KiB the kernel reads (mdadm's limit is lower)
_SB0_SIZE = 4096
_SB0_RESERVED = 65536
LEVELS = {-1: "linear", 0: "RAID-0", 1: "RAID-1", 4: "RAID-4", 5: "RAID-5", 6: "RAID-6", 10: "RAID-10",
          -4: "multipath", -5: "faulty"}
_RESHAPE_ACTIVE = 4  # feature_map bit: a reshape is under way
_RECOVERY_OFFSET = 2  # feature_map bit: this device is being rebuilt, up to recovery_offset
_SPARE = "it is a spare device and holds none of the array's data in use"
_FAULTY = "it is a faulty device: its data may be out of date"


@dataclass(frozen=True, slots=True)
class MdSuper:
    version: str  # "0.90", "1.0", "1.1", "1.2"
    level: int
    raid_disks: int
    name: str | None
    serial: str
    data_offset: int  # bytes
    data_size: int  # bytes
    why_not: str | None  # None: an active, in-sync member; else why its data is not the array's (a spare …)
    super_at: int  # where the superblock lies (bytes)

    @property
    def level_name(self) -> str:
        return LEVELS.get(self.level, f"level {self.level}")

    def describe(self) -> str:
        name = f" '{self.name}'" if self.name else ""
        return (f"a Linux MD {self.level_name} member (superblock {self.version}, array{name} of "
                f"{self.raid_disks} device{'s' if self.raid_disks != 1 else ''})")

    def unmappable(self) -> str | None:
        """Why this member's data area cannot be mapped by the filesystem in it, or ``None``."""
        if self.level != 1:
            return (f"{self.describe()}: the array's data is spread over its devices, so this member alone "
                    "holds neither its filesystem nor a map of it; use the assembled array (/dev/mdN)")
        if self.why_not is not None:
            return f"{self.describe()}: {self.why_not}"
        return None


def probe(source: BlockSource) -> MdSuper | None:
    """The MD superblock of a member, or ``None``: 1.1 and 1.2 at the start, 1.0 and 0.90 at the end.

    Raises ``UnsupportedError`` when a superblock's magic and version are where its version puts them but
    its checksum or fields are wrong.
    """
    size = source.size
    at_end = ((size // 512 - 16) & ~7) * 512 if size >= 16 * 512 else None
    for version, at in (("1.1", 0), ("1.2", 4096), ("1.0", at_end)):
        if at is None or at < 0 or at + _SB1_SIZE > size:
            continue
        head = read_tail(source, at, _SB1_SIZE) if version == "1.0" else read_at(source, at, _SB1_SIZE)
        if struct.unpack_from("<II", head) == (MAGIC, 1):
            return _parse1(source, version, at, head)
    if size >= 2 * _SB0_RESERVED:
        at = (size & ~(_SB0_RESERVED - 1)) - _SB0_RESERVED
        block = read_tail(source, at, _SB0_SIZE)
        for order in "<>":
            if struct.unpack_from(order + "III", block) == (MAGIC, 0, 90):
                return _parse0(block, order, at)
    return None


def read_tail(source: BlockSource, at: int, n: int) -> bytes:
    """Bytes near the end, where a failing disk's unreadable sectors must not stop a rescue: zeros then
    (no superblock or RAID metadata is found there; the rescue names the sectors it could not read)."""
    try:
        return read_at(source, at, n)
    except SourceIOError:
        return bytes(n)


def _fail(version: str, at: int, why: str) -> UnsupportedError:
    return UnsupportedError(f"a Linux MD superblock {version} at offset {at} is damaged: {why}")


def _csum(words: tuple[int, ...]) -> int:
    total = sum(words)
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def _parse1(source: BlockSource, version: str, at: int, head: bytes) -> MdSuper:
    level, _layout, _size, _chunk, raid_disks = struct.unpack_from("<iiQII", head, 72)
    feature_map = struct.unpack_from("<I", head, 8)[0]
    data_offset, data_size, super_offset, recovered = struct.unpack_from("<QQQQ", head, 128)
    dev_number = struct.unpack_from("<I", head, 160)[0]
    stored_csum, max_dev = struct.unpack_from("<II", head, 216)
    if super_offset * 512 != at:
        raise _fail(version, at, f"it says it lies at sector {super_offset}")
    if max_dev > _SB1_MAX_DEV:
        raise _fail(version, at, f"it claims {max_dev} device slots (at most {_SB1_MAX_DEV})")
    length = _SB1_SIZE + 2 * max_dev
    if at + length > source.size:
        raise _fail(version, at, "its device roles run past the end of the source")
    block = bytearray(read_at(source, at, length))
    block[216:220] = bytes(4)
    words = struct.unpack_from(f"<{length // 4}I", block)
    csum = _csum(words) + (struct.unpack_from("<H", block, length - 2)[0] if length % 4 else 0)
    if csum & 0xFFFFFFFF != stored_csum:
        raise _fail(version, at, f"its checksum is {stored_csum:#010x}, its bytes sum to {csum & 0xFFFFFFFF:#010x}")
    if level not in LEVELS:
        raise _fail(version, at, f"unknown RAID level {level}")
    begin, length_bytes = data_offset * 512, data_size * 512
    if begin + length_bytes > source.size or (version != "1.0" and begin < at + 512) or \
            (version == "1.0" and begin + length_bytes > at):
        raise _fail(version, at, f"its data area [{begin}, {begin + length_bytes}) overlaps the superblock or "
                                 f"runs past the end of the source ({source.size} bytes)")
    role = None
    if dev_number < max_dev:
        raw_role = struct.unpack_from("<H", block, _SB1_SIZE + 2 * dev_number)[0]
        role = {0xFFFF: _SPARE, 0xFFFE: _FAULTY}.get(raw_role)
    else:
        role = _SPARE  # no slot: mdadm reports such a device as a spare
    if role is None and feature_map & _RECOVERY_OFFSET:
        role = f"it is being rebuilt: its data area holds the array's data only up to sector {recovered}"
    if role is None and feature_map & _RESHAPE_ACTIVE:
        role = "a reshape is under way"
    name = head[32:64].split(b"\0", 1)[0].decode("utf-8", "replace") or None
    return MdSuper(version, level, raid_disks, name, str(uuid.UUID(bytes=bytes(head[16:32]))), begin, length_bytes,
                   role, at)


def _parse0(block: bytes, order: str, at: int) -> MdSuper:
    words = struct.unpack(f"{order}1024I", block)
    stored = words[38]
    csum = _csum((*words[:38], 0, *words[39:]))
    if csum != stored:
        raise _fail("0.90", at, f"its checksum is {stored:#010x}, its bytes sum to {csum:#010x}")
    level = struct.unpack(f"{order}i", struct.pack(f"{order}I", words[7]))[0]
    if level not in LEVELS:
        raise _fail("0.90", at, f"unknown RAID level {level}")
    raid_disks = words[10]
    state, raid_disk = words[992 + 4], words[992 + 3]
    role = None
    if state & 1:
        role = _FAULTY
    elif raid_disk >= raid_disks or not state & 0b010:
        role = _SPARE
    elif not state & 0b100:  # active but not in sync: being rebuilt
        role = "it is being rebuilt (not in sync): its data area is not all the array's yet"
    serial = b"".join(struct.pack(">I", w) for w in (words[5], words[13], words[14], words[15]))
    return MdSuper("0.90", level, raid_disks, None, str(uuid.UUID(bytes=serial)), 0, at, role, at)


def array_of(source: BlockSource) -> BlockSource | None:
    """The array's bytes in an MD RAID-1 member (its data area), ``None`` when ``source`` is no MD member.

    Raises ``UnsupportedError`` for a member whose data area does not hold the array (another level, a
    spare) or whose superblock is damaged.
    """
    member = probe(source)
    if member is None:
        return None
    why = member.unmappable()
    if why is not None:
        raise UnsupportedError(why)
    return WindowSource(source, member.data_offset, member.data_size)


def disk_member(source: BlockSource, partitions: list[tuple[int, int]]) -> MdSuper | None:
    """The 0.90 or 1.0 superblock at the end of a partitioned disk, when it is the disk's own (the disk is
    a member and its table is the array's), not that of the partition ending there; ``None`` otherwise,
    a damaged one included (the partitions are then mapped as they are)."""
    try:
        member = probe(source)
    except UnsupportedError:
        return None
    if member is None or member.version not in ("0.90", "1.0"):
        return None
    for offset, length in partitions:
        try:
            inner = probe(WindowSource(source, offset, length))
        except (UnsupportedError, ValueError):
            continue
        if inner is not None and offset + inner.super_at == member.super_at:
            return None
    return member
