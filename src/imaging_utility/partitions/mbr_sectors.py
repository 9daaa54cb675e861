"""The sector size an MBR counts in, when the source cannot say.

An MBR counts logical sectors and does not name their size.  A device says it (``BLKSSZGET``) and an image
keeps it, but a copy of a disk in a file looks 512 whatever it came from: the copy of a 4Kn disk, or of an
external USB disk whose bridge presents 4096-byte sectors (many 2–4 TB desktop drives sold in enclosures),
read at 512 puts every partition at an eighth of its place.  A partition found there would be read, and
mapped, from the wrong bytes.  So a source of 512-byte sectors whose partitions hold nothing recognizable at
their starts, but do at eight times those offsets where they all still fit, is read at 4096 (as
``read_partitions`` already tries both for a GPT).  Only a volume's own start is looked at: the boot sector
of NTFS, FAT, exFAT and BitLocker (a jump, then 55 AA at 510), ext2/3/4, XFS, Btrfs, ReFS, LVM2, LUKS and
Linux swap, the same signatures blkid takes a volume by; a dynamic disk's PRIVHEAD in sector 6; an extended
partition's first EBR (its logical partitions are numbered from it).
"""

from __future__ import annotations

from ..blocks import BlockSource, read_at
from ..errors import Error
from .c_table import MBR_EXTENDED_TYPES, MBR_TYPE_EMPTY

__all__ = ["mbr_sector_size"]

_Entry = tuple[int, bytes, int, bytes, int, int]  # status, CHS, type, CHS, first LBA, sectors
_HEAD = 4096
_BTRFS_MAGIC_AT = 65536 + 64


def mbr_sector_size(source: BlockSource, entries: list[_Entry]) -> int:
    """512 or 4096 for the MBR ``entries`` read from ``source`` (whose own sector size is kept unless it is
    512 and the partitions are only found at 4096)."""
    ss = source.sector_size
    used = [(lba, count) for _s, _c1, ptype, _c2, lba, count in entries if count and ptype != MBR_TYPE_EMPTY]
    starts = [lba for _s, _c1, ptype, _c2, lba, count in entries
              if count and ptype != MBR_TYPE_EMPTY and ptype not in MBR_EXTENDED_TYPES]
    chains = [lba for _s, _c1, ptype, _c2, lba, count in entries if count and ptype in MBR_EXTENDED_TYPES]
    if ss != 512 or source.size % 4096 or not used:
        return ss

    def found(sector: int) -> bool:
        return any(_volume_at(source, lba * sector) for lba in starts) or _privhead_at(source, sector) or \
            any(_ebr_at(source, lba * sector) for lba in chains)

    if found(512):
        return 512
    if all((lba + count) * 4096 <= source.size for lba, count in used) and found(4096):
        return 4096
    return 512


def _ebr_at(source: BlockSource, offset: int) -> bool:
    """An extended partition's first EBR: 55 AA, boot indicators 0x00/0x80, a first entry that is used."""
    try:
        sector = read_at(source, offset, 512) if offset > 0 and offset + 512 <= source.size else b""
    except Error:
        return False
    return sector[510:512] == b"\x55\xaa" and all(sector[446 + 16 * i] in (0, 0x80) for i in range(4)) and \
        int.from_bytes(sector[446 + 12 : 446 + 16], "little") > 0


def _privhead_at(source: BlockSource, ss: int) -> bool:
    """A Windows dynamic disk's LDM PRIVHEAD in sector 6 (its volumes need not start at the partition's)."""
    try:
        return source.size >= 7 * ss and read_at(source, 6 * ss, 8) == b"PRIVHEAD"
    except Error:
        return False


def _volume_at(source: BlockSource, offset: int) -> bool:
    if offset <= 0 or offset + _HEAD > source.size:
        return False
    try:
        head = read_at(source, offset, _HEAD)
        btrfs = read_at(source, offset + _BTRFS_MAGIC_AT, 8) if offset + _BTRFS_MAGIC_AT + 8 <= source.size else b""
    except Error:  # an unreadable sector or a damaged chunk there: nothing is known of it (read later, and named)
        return False
    boot = head[0] in (0xEB, 0xE9) and head[510:512] == b"\x55\xaa"  # NTFS, FAT, exFAT, BitLocker
    ext = head[1080:1082] == b"\x53\xef" and int.from_bytes(head[1048:1052], "little") <= 6  # + log block size
    if boot or ext or head[:4] == b"XFSB" or head[3:7] == b"ReFS":
        return True
    return head[512:520] == b"LABELONE" or head[:6] == b"LUKS\xba\xbe" or head[4086:4096] == b"SWAPSPACE2" or \
        btrfs == b"_BHRfS_M"
