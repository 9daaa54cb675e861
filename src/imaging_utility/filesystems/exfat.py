"""exFAT: used clusters from the Allocation Bitmap.

Spec: Microsoft "exFAT File System Specification" (learn.microsoft.com,
windows/win32/fileio/exfat-specification): §3.1 Main Boot Sector, §3.4 Boot
Checksum, §4 FAT, §7.1 Allocation Bitmap directory entry (type 0x81; bit 0 =
cluster 2, LSB-first), §7.2 Up-case Table (0x82), §7.3 Volume Label (0x83).
The FAT is not used for allocation: contiguous files flagged NoFatChain have no
chain.  It is used only to follow the chains of the root directory, the bitmap
and the up-case table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from ._bitmap import RunList, read_bitmap

OEM_ID = b"EXFAT   "

# Main Boot Sector from 0x40: PartitionOffset, VolumeLength, FatOffset, FatLength, ClusterHeapOffset,
# ClusterCount, FirstClusterOfRootDirectory, VolumeSerialNumber, FileSystemRevision, VolumeFlags,
# BytesPerSectorShift, SectorsPerClusterShift, NumberOfFats.
BOOT_SECTOR = struct.Struct("<QQIIIIIIHHBBB")
BOOT_SECTOR_OFFSET = 0x40
# Generic directory entry with a stream: EntryType, 19 bytes, FirstCluster, DataLength.
DIR_ENTRY = struct.Struct("<B19xIQ")
DIR_ENTRY_SIZE = 32
ENTRY_END = 0x00
ENTRY_BITMAP = 0x81
ENTRY_UPCASE = 0x82
ENTRY_LABEL = 0x83
BOOT_REGION_SECTORS = 12  # main boot region; the backup region follows it
FAT_LAST = 0xFFFFFFF6  # larger values: bad cluster (F7) or end of chain (F8..FF)
MAX_ROOT_BYTES = 256 << 20  # a root directory is at most 256 MiB (spec §6.2)


def _fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"exFAT boot sector found but {what}; image it in full without --used-only")


def boot_checksum(region: bytes, sector_size: int) -> int:
    """§3.4: checksum of the first 11 sectors, skipping VolumeFlags and PercentInUse."""
    s = 0
    for i, b in enumerate(region[: 11 * sector_size]):
        if i in (106, 107, 112):
            continue
        s = ((s >> 1) | ((s & 1) << 31)) + b & 0xFFFFFFFF
    return s


@dataclass(frozen=True)
class ExfatBoot:
    volume_length: int
    fat_offset: int
    fat_length: int
    heap_offset: int
    cluster_count: int
    root_cluster: int
    serial: int
    sector_shift: int
    cluster_shift: int
    num_fats: int

    @property
    def sector_size(self) -> int:
        return 1 << self.sector_shift

    @property
    def cluster_size(self) -> int:
        return 1 << (self.sector_shift + self.cluster_shift)

    @property
    def volume_size(self) -> int:
        return self.volume_length << self.sector_shift

    @property
    def heap(self) -> int:
        return self.heap_offset << self.sector_shift

    def cluster_of(self, offset: int) -> int:
        """The cluster at byte ``offset`` of the cluster heap (``cluster_offset``'s inverse)."""
        return (offset - self.heap) // self.cluster_size + 2

    def cluster_offset(self, n: int) -> int:
        return self.heap + (n - 2) * self.cluster_size

    @classmethod
    def from_bytes(cls, sector: bytes) -> ExfatBoot | None:
        if len(sector) < 512 or sector[3:11] != OEM_ID:
            return None
        (_, vol_len, fat_off, fat_len, heap_off, count, root, serial, _, _, bps_shift, spc_shift,
         nfats) = BOOT_SECTOR.unpack_from(sector, BOOT_SECTOR_OFFSET)
        boot = cls(vol_len, fat_off, fat_len, heap_off, count, root, serial, bps_shift, spc_shift, nfats)
        bad = None
        if sector[510:512] != b"\x55\xaa" or any(sector[11:64]):
            bad = "boot signature or MustBeZero field"
        elif not 9 <= bps_shift <= 12 or bps_shift + spc_shift > 25 or nfats not in (1, 2):
            bad = f"BytesPerSectorShift {bps_shift} / SectorsPerClusterShift {spc_shift} / NumberOfFats {nfats}"
        elif fat_off < 24 or heap_off < fat_off + nfats * fat_len or fat_len * (1 << bps_shift) < (count + 2) * 4:
            bad = f"FatOffset {fat_off} / FatLength {fat_len} / ClusterHeapOffset {heap_off}"
        elif heap_off + (count << spc_shift) > vol_len or not 2 <= root < count + 2:
            bad = f"ClusterCount {count} / VolumeLength {vol_len} / FirstClusterOfRootDirectory {root}"
        if bad:
            raise UnsupportedError(f"exFAT boot sector at offset 0 is damaged: {bad}")
        return boot

    @property
    def serial_text(self) -> str:
        return f"{self.serial >> 16:04X}-{self.serial & 0xFFFF:04X}"


def probe(source: BlockSource) -> ExfatBoot | None:
    return ExfatBoot.from_bytes(read_at(source, 0, 512))


class _Volume:
    """FAT lookups through a small page cache; for short chains (root, bitmap, up-case) only."""

    def __init__(self, source: BlockSource, boot: ExfatBoot) -> None:
        self.source = source
        self.boot = boot
        self._pages: dict[int, bytes] = {}
        self.root_extents: list[tuple[int, int]] = []

    def fat_entry(self, n: int) -> int:
        off = (self.boot.fat_offset << self.boot.sector_shift) + 4 * n
        if off + 4 > self.source.size:
            raise _fail(f"FAT entry {n} at offset {off:#x} lies past the end of the source")
        page = off >> 12
        if page not in self._pages:
            self._pages[page] = read_at(self.source, page << 12, 4096)
        return int.from_bytes(self._pages[page][off & 4095 : (off & 4095) + 4], "little")

    def extents(self, first: int, length: int, what: str) -> list[tuple[int, int]]:
        """Byte ranges holding ``length`` bytes of a stream whose FAT chain starts at ``first``."""
        boot, cs = self.boot, self.boot.cluster_size
        nclusters = -(-length // cs)
        if not 2 <= first < boot.cluster_count + 2 or not 0 < nclusters <= boot.cluster_count:
            raise _fail(f"the {what} has an invalid FirstCluster {first} or DataLength {length}")
        out: list[tuple[int, int]] = []
        n = first
        for _ in range(nclusters):
            if not 2 <= n < boot.cluster_count + 2:
                raise _fail(f"the {what}'s FAT chain reaches invalid cluster {n:#x}")
            off = boot.cluster_offset(n)
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + cs)
            else:
                out.append((off, cs))
            n = self.fat_entry(n)
        return out

    def root_entries(self) -> Iterator[tuple[int, int, bytes]]:
        """``(offset, type, 32-byte entry)`` of the root directory, up to its end marker."""
        boot, cs = self.boot, self.boot.cluster_size
        n = boot.root_cluster
        for _ in range(MAX_ROOT_BYTES // cs):
            if not 2 <= n < boot.cluster_count + 2:
                raise _fail(f"the root directory's FAT chain reaches invalid cluster {n:#x}")
            off = boot.cluster_offset(n)
            if off + cs > self.source.size:
                raise _fail(f"the root directory's cluster {n} at offset {off:#x} lies past the end of the source")
            self.root_extents.append((off, cs))
            data = read_at(self.source, off, cs)
            for pos in range(0, cs, DIR_ENTRY_SIZE):
                if data[pos] == ENTRY_END:
                    return
                yield off + pos, data[pos], data[pos : pos + DIR_ENTRY_SIZE]
            n = self.fat_entry(n)
            if n > FAT_LAST:
                return
        raise _fail(f"the root directory (cluster {boot.root_cluster}) has no end")


ENTRY_FILE = 0x85
SECONDARY_IN_USE = 0xC0  # TypeCategory secondary (bit 6) and InUse (bit 7)


def entry_sets(entries: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """The File entry sets in use among a directory's ``(offset, 32-byte entry)`` pairs: ``(offset of the
    File entry, the set's bytes)``, in order, up to the end marker.  A set is its File entry and the
    secondary entries in use that follow it, up to its SecondaryCount; one cut short (by a primary entry,
    one not in use, or the end) comes out shorter than ``32 × (1 + SecondaryCount)`` bytes."""
    pending = bytearray()
    at = 0
    for off, raw in entries:
        kind = raw[0]
        if kind == ENTRY_END:
            break
        if pending and kind & SECONDARY_IN_USE == SECONDARY_IN_USE:
            pending += raw
        else:
            if pending:
                yield at, bytes(pending)
                pending.clear()
            if kind != ENTRY_FILE:
                continue
            pending += raw
            at = off
        if len(pending) == DIR_ENTRY_SIZE * (pending[1] + 1):
            yield at, bytes(pending)
            pending.clear()
    if pending:
        yield at, bytes(pending)


def volume_label(source: BlockSource, boot: ExfatBoot) -> str | None:
    try:
        for _, etype, entry in _Volume(source, boot).root_entries():
            if etype == ENTRY_LABEL:
                return entry[2 : 2 + 2 * min(entry[1], 11)].decode("utf-16-le", "replace") or None
    except (UnsupportedError, ValueError):
        return None
    return None


VOLUME_FLAGS_OFFSET = 0x6A
VOLUME_DIRTY, MEDIA_FAILURE = 0x0002, 0x0004


def volume_state(source: BlockSource) -> str | None:
    """``None`` when the volume was cleanly unmounted, else why not (spec §3.1.13: VolumeDirty is set while
    mounted, MediaFailure after a read or write failed).  Its Allocation Bitmap may then miss clusters."""
    flags = int.from_bytes(read_at(source, VOLUME_FLAGS_OFFSET, 2), "little")
    if flags & VOLUME_DIRTY:
        return "it is marked dirty (not cleanly unmounted: still mounted, unplugged or crashed; run fsck.exfat)"
    if flags & MEDIA_FAILURE:
        return "it records a media failure (run fsck.exfat)"
    return None


def used_ranges(source: BlockSource, boot: ExfatBoot) -> Iterator[tuple[int, int]]:
    """Byte ranges in use: boot regions, FATs, the clusters the Allocation Bitmap marks, the tail; the volume
    must have been cleanly unmounted (``volume_state``) and its directories' streams must lie on clusters
    the bitmap marks used (``exfat_check``)."""
    unclean = volume_state(source)
    if unclean:
        raise _fail(unclean)
    ss = boot.sector_size
    region = read_at(source, 0, 12 * ss)
    want = boot_checksum(region, ss)
    if region[11 * ss : 11 * ss + 4] != want.to_bytes(4, "little"):
        raise _fail(f"the boot checksum at offset {11 * ss:#x} does not match (expected {want:#010x})")
    vol = _Volume(source, boot)
    bitmaps: list[tuple[int, int, int]] = []
    keep: list[tuple[int, int]] = []
    for off, etype, entry in vol.root_entries():
        _, first, length = DIR_ENTRY.unpack(entry)
        if etype == ENTRY_BITMAP:  # one per FAT; TexFAT volumes have two, and both are honoured
            bitmaps.append((off, first, length))
        elif etype == ENTRY_UPCASE:
            keep.extend(vol.extents(first, length, f"up-case table (entry at {off:#x})"))
    if not bitmaps:
        raise _fail(f"its root directory (cluster {boot.root_cluster}) has no Allocation Bitmap entry")
    runs: list[RunList] = []
    for off, first, length in bitmaps:
        what = f"Allocation Bitmap (entry at {off:#x})"
        storage = vol.extents(first, length, what)
        keep.extend(storage)
        used = RunList()
        try:
            read_bitmap(source, storage, boot.cluster_count, used, base=2)
        except ValueError as e:
            raise _fail(f"the {what} is unreadable: {e}") from None
        # A bitmap that leaves its own cluster or the root directory free is not the real one.
        for name, cluster in (("Allocation Bitmap", first), ("root directory", boot.root_cluster)):
            if not used.contains(cluster):
                raise _fail(f"the {what} marks the {name}'s cluster {cluster} free")
        runs.append(used)
    from .exfat_check import unmapped_stream  # it reads directories with this module's _Volume

    lost = unmapped_stream(source, boot, lambda first, end: any(r.covers(first, end) for r in runs))
    if lost:
        raise _fail(lost)
    heap_end = boot.cluster_offset(boot.cluster_count + 2)
    fats = boot.fat_offset * ss, boot.num_fats * boot.fat_length * ss
    always = [(0, 2 * BOOT_REGION_SECTORS * ss), fats, (heap_end, boot.volume_size - heap_end)]
    origin = boot.heap - 2 * boot.cluster_size
    return chain(always, keep, vol.root_extents, *(r.byte_ranges(boot.cluster_size, origin) for r in runs))
