"""What is at the start of a volume that holds no filesystem this program maps: said in one line, so a user
whose volume is imaged in full (or refused for ``--used-only``) learns why: an encrypted volume (BitLocker,
LUKS), a filesystem this program does not read (ReFS, APFS, HFS+, F2FS, SquashFS), a RAID member, a
partition table, zeros.  Signatures from each format's own documentation: BitLocker's volume header
(``-FVE-FS-`` as the OEM name), LUKS1/2 (``LUKS\\xba\\xbe`` and a version), ReFS (``ReFS`` as the OEM
name), APFS (``NXSB`` in the container superblock at 32), HFS+/HFSX (``H+``/``HX`` at 1024), F2FS (magic
0xF2F52010 at 1024), SquashFS (``hsqs``), Linux MD superblocks 1.1 and 1.2 (0xa92b4efc at 0 or 4096).

At the end of a whole disk, ``firmware_raid`` finds the metadata of a firmware ("fake") RAID set, as mdadm's
``super-intel.c`` and ``super-ddf.c`` look for it: Intel Matrix Storage / Rapid Storage Technology (IMSM:
``Intel Raid ISM Cfg Sig. `` at the start of the second-to-last sector) and SNIA DDF (0xDE11DE11,
big-endian, at the start of the last sector).  Such a disk's partition table and filesystems are the
array's: on a striped set they describe the array's offsets, not the disk's, so nothing there is mapped
from the disk's start; an IMSM RAID-1 volume is mapped through its own place (``imsm.py``,
``ops/diskmap_imsm.py``)."""

from __future__ import annotations

import struct

from ..blocks import BlockSource, read_at
from .md import read_tail

_MD_MAGIC = 0xA92B4EFC
_F2FS_MAGIC = 0xF2F52010
_NAMES = {"refs": "a ReFS volume", "apfs": "an APFS container", "hfsplus": "an HFS+ volume",
          "squashfs": "a SquashFS image", "f2fs": "an F2FS volume"}


def identify(source: BlockSource) -> tuple[str, str] | None:
    """``(name, what it is)`` of a volume this program recognizes but does not map, or ``None``."""
    return _identify(read_at(source, 0, 8192))


def _identify(head: bytes) -> tuple[str, str] | None:
    if head[3:11] == b"-FVE-FS-":
        return "bitlocker", ("a BitLocker-encrypted volume ('-FVE-FS-' at offset 3): which of its clusters are in "
                             "use is hidden without its key")
    if head[:6] == b"LUKS\xba\xbe":
        version = struct.unpack_from(">H", head, 6)[0] if len(head) >= 8 else 0
        return "luks", (f"a LUKS{version or ''} encrypted volume (cryptsetup): which of its blocks are in use is "
                        "hidden without its key")
    for name, found in (("refs", head[3:11] == b"ReFS\0\0\0\0"), ("apfs", head[32:36] == b"NXSB"),
                        ("hfsplus", head[1024:1026] in (b"H+", b"HX")), ("squashfs", head[:4] == b"hsqs"),
                        ("f2fs", len(head) >= 1028 and struct.unpack_from("<I", head, 1024)[0] == _F2FS_MAGIC)):
        if found:
            return name, f"{_NAMES[name]}, a filesystem this program does not read"
    for at in (0, 4096):
        if len(head) >= at + 8 and struct.unpack_from("<II", head, at) == (_MD_MAGIC, 1):
            return "md", f"a Linux MD RAID member (superblock 1.{at // 4096 + 1}): image the assembled array instead"
    return None


_IMSM = b"Intel Raid ISM Cfg Sig. "
_DDF_MAGIC = 0xDE11DE11


def raid_sector_sizes(source: BlockSource) -> tuple[int, ...]:
    """The sector sizes firmware RAID metadata at the end of ``source`` may be laid out in: the source's own,
    and 4096 too where that is 512 but the size allows 4096 (a copy of a 4Kn disk in a file looks 512)."""
    ss = source.sector_size if source.sector_size in (512, 4096) else 512
    return (ss, 4096) if ss == 512 and source.size % 4096 == 0 else (ss,)


def firmware_raid(source: BlockSource) -> str | None:
    """What firmware RAID set the disk in ``source`` belongs to, from the metadata at its end, or ``None``.
    The IMSM anchor is the second-to-last sector, DDF's the last, in the disk's own sector size."""
    if source.size < 4 * 4096:
        return None
    tail = read_tail(source, source.size - 8192, 8192)
    for ss in raid_sector_sizes(source):
        if tail[-2 * ss :].startswith(_IMSM):
            at = len(tail) - 2 * ss + len(_IMSM)
            version = tail[at : at + 6].split(b"\0")[0].decode("ascii", "replace")
            return (f"a member of an Intel Matrix Storage / RST firmware RAID set (IMSM metadata {version} at "
                    "the end of the disk)")
        if struct.unpack_from(">I", tail, len(tail) - ss)[0] == _DDF_MAGIC:
            return "a member of a DDF firmware RAID set (DDF anchor in the last sector)"
    return None


def describe(source: BlockSource) -> str:
    """What is at offset 0, for a message that says why no filesystem was mapped."""
    head = read_at(source, 0, 8192)
    known = _identify(head)
    if known is not None:
        return known[1]
    raid = firmware_raid(source)
    if raid is not None:
        return f"{raid}: its partitions and filesystems are the array's; image the assembled array"
    if head[512:520] == b"EFI PART":
        return "a GPT partition table ('EFI PART' at offset 512): this is a whole disk, image a partition"
    if not head[:1024].strip(b"\0"):
        return "only zero bytes at offset 0"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return "an MBR-like boot sector (55 AA at offset 510) without a filesystem"
    return f"first bytes: {head[:8]!r}"
