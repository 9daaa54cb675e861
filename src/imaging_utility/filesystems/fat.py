"""FAT12 / FAT16 / FAT32: used clusters are the non-zero FAT entries.

Spec: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103) — BPB
fields, entry encodings — as summarised in ``shared/reference/ntfs-bitmap-and-extfs.md`` §3.
The FAT type: FAT32 when BPB_FATSz16 is 0 (as Linux and Windows decide, whatever the
cluster count), else FAT12 below 4085 clusters and FAT16 from there.

Everything before the data area (boot sector, reserved sectors with FSInfo and
the backup boot sector, every FAT copy, the FAT12/16 root directory) is always
kept.  Clusters used by *any* mirrored FAT copy count as used.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from ._bitmap import PIECE, RunList

# BPB (0x00..0x24): jump, OEM, BytsPerSec, SecPerClus, RsvdSecCnt, NumFATs, RootEntCnt, TotSec16,
# Media, FATSz16, SecPerTrk, NumHeads, HiddSec, TotSec32.
BPB = struct.Struct("<3s8sHBHBHHBHHHII")
# FAT32 extension (0x24): FATSz32, ExtFlags, FSVer, RootClus, FSInfo, BkBootSec.
BPB32 = struct.Struct("<IHHIHH")
# Extended boot record tail: DrvNum, Reserved1, BootSig, VolID, VolLab (at 0x24 or 0x40).
EBR = struct.Struct("<BBBI11s")
EBR_OFFSET_16 = 0x24
EBR_OFFSET_32 = 0x40
EXT_BOOT_SIG = 0x29
EXTFLAGS_NO_MIRROR = 0x80

_FREE = {
    2: re.compile(rb"(?:\x00\x00)+"),
    # FAT32 keeps the top 4 bits of an entry reserved: free means the low 28 bits are zero.
    4: re.compile(rb"(?:\x00\x00\x00[\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0])+"),
}
_USED = {
    2: re.compile(rb"(?:(?!\x00\x00).{2})+", re.DOTALL),
    4: re.compile(
        rb"(?:(?!\x00\x00\x00[\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0]).{4})+", re.DOTALL
    ),
}


@dataclass(frozen=True)
class FatBoot:
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    num_fats: int
    root_entries: int
    total_sectors: int
    media: int
    fat_sectors: int
    ext_flags: int
    root_cluster: int
    serial: int | None
    label: str | None
    fat32: bool = False  # BPB_FATSz16 is 0

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def root_dir_sectors(self) -> int:
        return -(-(self.root_entries * 32) // self.bytes_per_sector)

    @property
    def first_data_sector(self) -> int:
        return self.reserved_sectors + self.num_fats * self.fat_sectors + self.root_dir_sectors

    @property
    def cluster_count(self) -> int:
        return (self.total_sectors - self.first_data_sector) // self.sectors_per_cluster

    @property
    def bits(self) -> int:
        """FAT32 exactly when BPB_FATSz16 is 0, as Linux (``fat_fill_super``) and Windows (fastfat's
        ``FatIsFat32``) decide: small FAT32 volumes with fewer than 65,525 clusters are common.
        FAT12 or FAT16 by the cluster count, as fatgen103 says."""
        if self.fat32:
            return 32
        return 12 if self.cluster_count < 4085 else 16

    @property
    def volume_size(self) -> int:
        return self.total_sectors * self.bytes_per_sector

    @property
    def data_offset(self) -> int:
        return self.first_data_sector * self.bytes_per_sector

    @classmethod
    def from_bytes(cls, sector: bytes) -> FatBoot | None:
        """Parse a boot sector; ``None`` unless it carries a plausible BPB (FAT has no magic number)."""
        if len(sector) < 512 or sector[510:512] != b"\x55\xaa" or sector[0] not in (0xEB, 0xE9):
            return None
        (_, _, bps, spc, rsvd, nfats, root_ent, tot16, media, fatsz16, _, _, _, tot32) = BPB.unpack_from(sector)
        if (bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or rsvd == 0
                or nfats == 0 or media not in (0xF0, *range(0xF8, 0x100))):
            return None
        fatsz32, ext_flags, _, root_clus, _, _ = BPB32.unpack_from(sector, 0x24)
        fatsz = fatsz16 or fatsz32
        total = tot16 or tot32
        if fatsz == 0 or total == 0:
            return None
        ebr_at = EBR_OFFSET_16 if fatsz16 else EBR_OFFSET_32
        _, _, sig, vol_id, vol_lab = EBR.unpack_from(sector, ebr_at)
        label = vol_lab.decode("cp437").strip() if sig == EXT_BOOT_SIG else ""
        boot = cls(bps, spc, rsvd, nfats, root_ent, total, media, fatsz, ext_flags if not fatsz16 else 0,
                   root_clus if not fatsz16 else 0, vol_id if sig == EXT_BOOT_SIG else None,
                   None if label in ("", "NO NAME") else label, fatsz16 == 0)
        bad = None
        if boot.first_data_sector >= total or boot.cluster_count < 1:
            bad = f"FirstDataSector {boot.first_data_sector} >= TotSec {total}"
        elif boot.bits == 32 and root_ent:
            bad = f"FAT32 (FATSz16 0) but RootEntCnt {root_ent}"
        elif boot.bits == 16 and boot.cluster_count >= 65525:
            bad = f"FAT16 (FATSz16 {fatsz16}) but {boot.cluster_count} clusters, more than FAT16 can address"
        elif fatsz * bps * 8 < (boot.cluster_count + 2) * boot.bits:
            bad = f"FATSz {fatsz} sectors is too small for {boot.cluster_count} clusters"
        elif boot.bits == 32 and not (2 <= root_clus < boot.cluster_count + 2):
            bad = f"RootClus {root_clus} out of range"
        if bad:
            raise UnsupportedError(f"FAT boot sector at offset 0 is damaged: {bad}")
        return boot

    @property
    def type(self) -> str:
        return f"fat{self.bits}"

    @property
    def serial_text(self) -> str | None:
        return None if self.serial is None else f"{self.serial >> 16:04X}-{self.serial & 0xFFFF:04X}"


KEEP_FAT_MAX = 64 << 20  # a FAT32 of 16 million clusters; larger ones are read a second time


def _fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"FAT boot sector found but {what}; image it in full without --used-only")


def probe(source: BlockSource) -> FatBoot | None:
    return FatBoot.from_bytes(read_at(source, 0, 512))


def entry_runs(data: bytes | memoryview, entry_size: int, first: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` entry numbers of the non-free FAT16 (2) / FAT32 (4) entries in ``data``,
    whose first entry is number ``first``.  Runs of entries are matched by the C regex engine."""
    free, used = _FREE[entry_size], _USED[entry_size]
    n = len(data) - len(data) % entry_size
    pos = 0
    while pos < n:
        m = free.match(data, pos, n)
        if m:
            pos = m.end()
            continue
        m = used.match(data, pos, n)
        assert m is not None  # an entry that is not free is used
        yield first + pos // entry_size, first + m.end() // entry_size
        pos = m.end()


def _fat12_runs(data: bytes, count: int) -> Iterator[tuple[int, int]]:
    start = -1
    for n in range(2, count + 2):
        v = int.from_bytes(data[n + n // 2 : n + n // 2 + 2], "little")
        v = v >> 4 if n & 1 else v & 0xFFF
        if v and start < 0:
            start = n
        elif not v and start >= 0:
            yield start, n
            start = -1
    if start >= 0:
        yield start, count + 2


def _copy_runs(source: BlockSource, boot: FatBoot, copy: int, keep: bytearray | None = None) -> RunList:
    """Used clusters according to FAT copy ``copy``; its FAT16/32 entries are appended to ``keep``."""
    fat_off = (boot.reserved_sectors + copy * boot.fat_sectors) * boot.bytes_per_sector
    last = boot.cluster_count + 2  # entries 2 .. count+1 describe clusters
    runs = RunList()
    if boot.bits == 12:
        data = read_at(source, fat_off, (last * 3 + 1) // 2 + 1)
        first = int.from_bytes(data[0:2], "little") & 0xFFF
        runs.extend(_fat12_runs(data, boot.cluster_count))
    else:
        esz = boot.bits // 8
        first = int.from_bytes(read_at(source, fat_off, esz), "little") & 0x0FFFFFFF
        view = memoryview(bytearray(PIECE))
        step = PIECE // esz
        for entry in range(0, last, step):
            n = min(step, last - entry)
            source.readinto_at(fat_off + entry * esz, view[: n * esz])
            if keep is not None:
                keep += view[: n * esz]
            runs.extend((max(s, 2), e) for s, e in entry_runs(view[: n * esz], esz, entry) if e > 2)
    if first & 0xFF != boot.media:
        raise _fail(f"FAT copy {copy} at offset {fat_off:#x} starts with {first:#x}, not media byte {boot.media:#x}")
    return runs


def volume_state(source: BlockSource, boot: FatBoot) -> str | None:
    """``None`` when the volume was cleanly unmounted, else why not.  Linux and Windows NT set bit 0 of the
    boot sector's state byte (BS_Reserved1) while a volume is mounted; Windows clears the clean-shutdown
    bit of FAT[1] (FAT16 0x8000, FAT32 0x08000000) and the hard-error bit (0x4000, 0x04000000) records a
    disk error (fatgen103 "FAT[1]").  Such a FAT may miss clusters a file was given before the crash."""
    state = read_at(source, (EBR_OFFSET_32 if boot.fat32 else EBR_OFFSET_16) + 1, 1)[0]
    if state & 0x01:
        return "it is marked dirty (not cleanly unmounted: still mounted, unplugged or crashed; run fsck.fat)"
    if boot.bits == 12:
        return None
    esz = boot.bits // 8
    fat1 = int.from_bytes(read_at(source, boot.reserved_sectors * boot.bytes_per_sector + esz, esz), "little")
    clean, error = (0x8000, 0x4000) if esz == 2 else (0x08000000, 0x04000000)
    if not fat1 & clean:
        return "its FAT says it was not cleanly shut down (unplugged or crashed; run fsck.fat)"
    if not fat1 & error:
        return "its FAT records a disk error (run fsck.fat)"
    return None


def used_ranges(source: BlockSource, boot: FatBoot) -> Iterator[tuple[int, int]]:
    """Byte ranges in use: the whole area before the data region, used clusters, and the tail; the volume
    must have been cleanly unmounted (``volume_state``), or its FAT may miss what a file uses, and every
    directory entry must start on a cluster the FAT marks used (``fat_check``)."""
    mirrored = not boot.ext_flags & EXTFLAGS_NO_MIRROR
    copies = range(boot.num_fats) if mirrored else [boot.ext_flags & 0x0F]
    if not mirrored and copies[0] >= boot.num_fats:
        raise _fail(f"ExtFlags {boot.ext_flags:#x} names active FAT {copies[0]} of {boot.num_fats}")
    # damage is said first: FAT[1] may be damage too.  The first copy's entries are kept for the link
    # check (fat_check.free_link) when that costs little memory, so the FAT is not read twice.
    kept = bytearray() if (boot.cluster_count + 2) * boot.bits // 8 <= KEEP_FAT_MAX else None
    runs = [_copy_runs(source, boot, c, kept if i == 0 else None) for i, c in enumerate(copies)]
    unclean = volume_state(source, boot)
    if unclean:
        raise _fail(unclean)
    if boot.bits == 32 and not runs[0].contains(boot.root_cluster):
        raise _fail(f"the FAT marks the root directory's cluster {boot.root_cluster} free")
    from .fat_check import free_link, free_start  # fat_dir, which it walks with, builds on this module

    lost = free_start(source, boot, lambda cluster: any(r.contains(cluster) for r in runs)) \
        or free_link(source, boot, runs, kept or None)
    if lost:
        raise _fail(lost)
    cs, data = boot.cluster_size, boot.data_offset
    heap_end = data + boot.cluster_count * cs
    always = [(0, data), (heap_end, boot.volume_size - heap_end)]
    return chain(always, *(r.byte_ranges(cs, data - 2 * cs) for r in runs))
