"""The used ranges of an Intel RST (IMSM) firmware RAID member: each RAID-1 volume planned as a disk of its own.

A RAID-1 volume of two disks holds the whole volume on each member at its offset, so the volume's own
partition table and filesystems map the member's bytes there (``plan_disk`` on a window of the volume,
whatever it holds: a partitioned disk, one filesystem, nothing known).  Everything else is kept: the
metadata at the disk's end, the bytes of striped volumes (RAID-0/5/10) and of volumes being rebuilt or
migrated, space no volume holds.  Damaged metadata keeps the whole disk, with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..blocks import BlockSource, WindowSource
from ..errors import RefusedError, UnsupportedError
from ..extents import AllocationMap, compose
from ..filesystems import FilesystemInfo, VolumeInfo
from ..filesystems.imsm import read_imsm

if TYPE_CHECKING:
    from .diskmap import DiskPlan

PlanDisk = Callable[[BlockSource], "DiskPlan"]


def plan_imsm(source: BlockSource, plan_disk: PlanDisk,
              ) -> tuple[FilesystemInfo, AllocationMap, list[str]] | str | None:
    """(the set's summary with one volume each, the disk's map, warnings) when some RAID-1 volume is mapped;
    else why nothing is (a string), or None when the disk holds no IMSM metadata."""
    try:
        found = read_imsm(source)
    except UnsupportedError as e:
        return str(e)
    if found is None:
        return None
    pieces: list[tuple[int, int, AllocationMap]] = []  # each mapped volume: its place and its own map
    volumes: list[VolumeInfo] = []
    warnings: list[str] = []
    for vol in found.volumes:
        label = f"imsm/{vol.name}"
        if vol.why_not is not None:
            held = max(0, min(vol.member_bytes, source.size - vol.offset))
            volumes.append(VolumeInfo(label, vol.size, None, held, f"kept in full: {vol.why_not}"))
            warnings.append(f"{label}: {vol.why_not}; kept in full")
            continue
        try:
            sub = plan_disk(WindowSource(source, vol.offset, vol.size))
        except RefusedError as e:  # a table inside the volume that cannot be trusted: that volume is kept
            why = str(e).split("; image the disk in full")[0]
            volumes.append(VolumeInfo(label, vol.size, None, vol.size, f"kept in full: {why}"))
            warnings.append(f"{label}: {why}; kept in full")
            continue
        pieces.append((vol.offset, vol.size, sub.allocation))
        what = sub.volume.type if sub.volume is not None else f"{sub.table.scheme or 'no known'} disk"
        volumes.append(VolumeInfo(label, vol.size, what, sub.allocation.used_bytes))
        warnings += [f"{label}: {w}" for w in sub.warnings]
    if not pieces:
        reasons = "; ".join(f"{v.name.removeprefix('imsm/')}: {(v.note or '').removeprefix('kept in full: ')}"
                            for v in volumes) or "it holds no volume"
        return f"a member of an Intel Matrix Storage / RST firmware RAID set ({reasons})"
    pieces.sort(key=lambda p: p[0])
    if any(a + n > b for (a, n, _), (b, _, _) in itertools.pairwise(pieces)):
        return "a member of an Intel Matrix Storage / RST firmware RAID set whose RAID-1 volumes overlap"
    info = FilesystemInfo("imsm", 512, source.size, None, f"IMSM {found.version}", tuple(volumes))
    return info, compose(source.size, pieces), warnings
