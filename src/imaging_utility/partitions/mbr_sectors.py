"""The sector size an MBR counts in, when the source cannot say.

An MBR counts logical sectors and does not name their size.  A device says it (``BLKSSZGET``) and an image
keeps it, but a copy of a disk in a file looks 512 whatever it came from: the copy of a 4Kn disk, or of an
external USB disk whose bridge presents 4096-byte sectors (many 2–4 TB desktop drives sold in enclosures),
read at 512 puts every partition at an eighth of its place.  A partition found there would be read, and
mapped, from the wrong bytes.  So a source of 512-byte sectors whose partitions hold nothing recognizable at
their starts, but do at eight times those offsets where they all still fit, is read at 4096 (as
``read_partitions`` already tries both for a GPT).  Only a volume's own start is looked at: the boot sector
of NTFS, FAT, exFAT and BitLocker (a jump, then 55 AA at 510), ext2/3/4, XFS, Btrfs, ReFS, LVM2, LUKS and
Linux swap, the same signatures blkid takes a volume by; and a dynamic disk's PRIVHEAD in sector 6.
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
    if ss != 512 or source.size % 4096 or not starts:
        return ss
    if any(_volume_at(source, lba * 512) for lba in starts) or _privhead_at(source, 512):
        return 512
    if all((lba + count) * 4096 <= source.size for lba, count in used) and \
            (any(_volume_at(source, lba * 4096) for lba in starts) or _privhead_at(source, 4096)):
        return 4096
    return 512


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
