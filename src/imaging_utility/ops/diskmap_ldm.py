"""The used ranges of a Windows dynamic disk's (LDM) data partition: each volume's filesystem through its pieces.

The LDM database (``partitions/ldm.py``) says where every volume of the disk group lies on this disk.
A volume readable from this disk alone (simple, spanned with every piece here, one plex of a mirror) is
opened through its pieces and its filesystem's map is carried back onto the disk; the pieces of every
other volume (striped, RAID-5, spanned onto other disks, or a filesystem not known or not trusted) are
kept whole, and so is everything of the partition outside the database's data area.  Space of the data
area that no volume holds is unused, as Windows' Disk Management shows it.  A database that is missing,
damaged or inconsistent keeps the partition whole, with the reason.
"""

from __future__ import annotations

from ..blocks import BlockSource
from ..errors import UnsupportedError
from ..extents import AllocationMap
from ..filesystems import FilesystemInfo, VolumeInfo, allocation_map
from ..partitions import Partition, PartitionTable
from ..partitions.ldm import GPT_LDM_METADATA, LdmVolume, read_ldm
from ..partitions.ldm_source import LdmVolumeSource
from ..partitions.table import DYNAMIC_WHY


def plan_dynamic(source: BlockSource, part: Partition, table: PartitionTable,
                 ) -> tuple[FilesystemInfo | None, AllocationMap | None, str | None]:
    """(the partition's LDM summary, its partition-relative map, why it is kept whole) for dynamic ``part``."""
    try:
        db = read_ldm(source, table)
    except UnsupportedError as e:
        return None, None, f"a Windows dynamic disk (LDM) partition: {e}"
    if db is None:
        return None, None, DYNAMIC_WHY
    if part.type_id.lower() == GPT_LDM_METADATA:  # the database itself
        return None, None, None
    lo, hi = part.offset, part.end
    area = (max(lo, db.data_start), min(hi, db.data_start + db.data_size))
    ranges: list[tuple[int, int]] = [(lo, area[0] - lo), (area[1], hi - area[1])] if area[0] < area[1] \
        else [(lo, hi - lo)]
    volumes: list[VolumeInfo] = []
    for vol in db.volumes:
        mine = [(o, n) for o, n, name in db.pieces if name == vol.name]
        if not mine:  # a volume wholly on other disks
            continue
        label = f"{db.group}/{vol.name}"
        why = vol.why_not
        if why is None:
            try:
                info, amap = allocation_map(LdmVolumeSource(source, vol))
            except UnsupportedError as e:
                why = str(e).split("; image it in full")[0]
            else:
                carried = _carry(vol, amap)
                ranges += carried
                kept = [(o, n) for o, n in mine if not any(o <= d < o + n for _, d, _ in vol.extents)]
                ranges += kept  # a mirror's pieces on this disk that are not the plex read
                volumes.append(VolumeInfo(label, vol.size, info.type, AllocationMap(carried + kept,
                                          size=source.size).used_bytes))
                continue
        ranges += mine
        volumes.append(VolumeInfo(label, vol.size, None, sum(n for _, n in mine), f"kept in full: {why}"))
    clipped = [(max(o, lo) - lo, min(o + n, hi) - max(o, lo)) for o, n in ranges if min(o + n, hi) > max(o, lo)]
    fs = FilesystemInfo("ldm", 512, part.length, db.group, db.disk_name, tuple(volumes))
    return fs, AllocationMap(clipped, size=part.length, cluster_size=512), None


def _carry(vol: LdmVolume, amap: AllocationMap) -> list[tuple[int, int]]:
    """The volume's used ranges as disk byte ranges, through its pieces."""
    out: list[tuple[int, int]] = []
    for vol_off, disk_off, length in vol.extents:
        inside = min(length, max(0, amap.size - vol_off))  # pieces may hold more than the volume's size
        out += [(disk_off + o - vol_off, n) for o, n in amap.used_in(vol_off, inside)] if inside else []
        if inside < length:
            out.append((disk_off + inside, length - inside))
    return out
