"""The used ranges of an LVM2 physical volume: each logical volume's filesystem map through its segments.

Kept whole: everything before the first physical extent (label, metadata area, any boot loader
area) and after the last one (a second metadata area).  Extents allocated to no LV are unused.
Each LV readable from this PV (``lvm.unreadable_reason``) is opened as a ``BlockSource`` and its
own allocation map (any supported filesystem) is carried onto the PV: a linear segment shifts
it, a striped one widens each used range to whole stripe rows (never less than what is used).
Every other LV, and an LV whose filesystem is unknown or cannot be trusted, is kept in full and
says why in its ``VolumeInfo.note``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..blocks import BlockSource
from ..errors import UnsupportedError
from ..extents import AllocationMap
from .lvm import LogicalVolume, PvLabel, VolumeGroup, pv_pieces, read_vg, unreadable_reason
from .lvm_source import LvSource


@dataclass(frozen=True)
class VolumeInfo:
    """One logical volume as imaged: its filesystem (``None``: unknown) and the PV bytes kept for it."""

    name: str  # "vg/lv"
    size: int
    filesystem: str | None
    used_bytes: int
    note: str | None = None  # why it is kept in full


InnerMap = Callable[[BlockSource], tuple[str, AllocationMap]]  # an LV -> (filesystem type, its map)


def _carry(vg: VolumeGroup, lv: LogicalVolume, amap: AllocationMap) -> list[tuple[int, int]]:
    """The LV's used ranges as PV byte ranges."""
    pv = vg.pvs[vg.this_pv]
    out: list[tuple[int, int]] = []
    for seg in lv.segments:
        bases = [pv.pe_start + pe * vg.extent_size for _, pe in seg.stripes]
        used = amap.used_in(seg.start, seg.length)
        if len(bases) == 1:
            out.extend((bases[0] + o - seg.start, n) for o, n in used)
            continue
        row = seg.stripe_size * len(bases)
        for o, n in used:
            first, last = (o - seg.start) // row, -(-(o + n - seg.start) // row)
            out.extend((b + first * seg.stripe_size, (last - first) * seg.stripe_size) for b in bases)
    return out


def pv_used(source: BlockSource, label: PvLabel, inner: InnerMap,
            ) -> tuple[VolumeGroup, list[tuple[int, int]], list[VolumeInfo]]:
    """The volume group, the PV's used ``(offset, length)`` ranges, and what was done with each LV."""
    vg = read_vg(source, label)
    pv = vg.pvs[vg.this_pv]
    end = pv.pe_start + pv.pe_count * vg.extent_size
    ranges: list[tuple[int, int]] = [(0, pv.pe_start), (end, max(label.device_size, source.size) - end)]
    volumes: list[VolumeInfo] = []
    for lv in vg.lvs:
        pieces = pv_pieces(vg, lv)
        if not pieces:
            continue
        why = unreadable_reason(vg, lv)
        fs: str | None = None
        if why is None:
            try:
                fs, amap = inner(LvSource(source, vg, lv))
            except UnsupportedError as e:
                why = str(e).split("; image it in full")[0]
            else:
                carried = _carry(vg, lv, amap)
                ranges.extend(carried)
                used = AllocationMap(carried, size=end).used_bytes
                volumes.append(VolumeInfo(lv.full_name, lv.size, fs, used))
                continue
        ranges.extend(pieces)
        volumes.append(VolumeInfo(lv.full_name, lv.size, fs, sum(n for _, n in pieces), f"kept in full: {why}"))
    return vg, ranges, volumes
