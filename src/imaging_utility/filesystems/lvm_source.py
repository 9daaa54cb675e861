"""A logical volume as a ``BlockSource``, read through its segments from the physical volume.

Linear segments map straight onto the PV's extents; striped ones round-robin ``stripe_size``
pieces over their stripes (lvm2 ``lib/metadata/lv_manip.c``; device-mapper ``dm-stripe``).  Only
LVs that ``lvm.unreadable_reason`` accepts are opened.  A PV on an MD RAID-1 array is found in the data
area of a member.
"""

from __future__ import annotations

import bisect

from ..blocks import BlockSource, MappedSource
from ..errors import NotFoundError, UnsupportedError
from .lvm import LogicalVolume, PvLabel, VolumeGroup, probe, read_vg, unreadable_reason
from .md import array_of

__all__ = ["LvSource", "logical_volumes", "open_lv", "volume_names"]


class LvSource(MappedSource):
    """A logical volume's bytes, mapped through its segments onto the PV ``base``; thread-safe."""

    def __init__(self, base: BlockSource, vg: VolumeGroup, lv: LogicalVolume) -> None:
        why = unreadable_reason(vg, lv)
        if why:
            raise UnsupportedError(f"logical volume {lv.full_name} cannot be read from this PV: it is {why}")
        self.base, self.lv = base, lv
        pv = vg.pvs[vg.this_pv]
        self._starts = [s.start for s in lv.segments]
        self._segs = [(s, tuple(pv.pe_start + pe * vg.extent_size for _, pe in s.stripes)) for s in lv.segments]

    @property
    def size(self) -> int:
        return self.lv.size

    def _map(self, offset: int, want: int) -> tuple[int, int]:
        """(PV offset, bytes contiguous there) for LV ``offset``."""
        seg, bases = self._segs[bisect.bisect_right(self._starts, offset) - 1]
        rel = offset - seg.start
        if len(bases) == 1:
            return bases[0] + rel, min(want, seg.end - offset)
        ss = seg.stripe_size
        row, within = divmod(rel, ss * len(bases))
        k, inner = divmod(within, ss)
        return bases[k] + row * ss + inner, min(want, ss - inner, seg.end - offset)


def _pv(source: BlockSource) -> tuple[BlockSource, PvLabel | None]:
    """The PV in ``source`` (or in the array of an MD RAID-1 member) and its label."""
    try:
        array = array_of(source)
    except UnsupportedError:
        array = None  # not the array's bytes: no PV is looked for in them
    source = source if array is None else array
    return source, probe(source)


def open_lv(source: BlockSource, name: str) -> LvSource:
    """Logical volume ``name`` (``VG/LV``, ``LV`` or ``VG-LV``) of the PV at offset 0 of ``source``.

    Raises ``NotFoundError`` when ``source`` is no PV or has no such LV, ``UnsupportedError``
    when the LV cannot be read from this PV alone (thin, snapshot, RAID, several PVs).
    """
    source, label = _pv(source)
    if label is None:
        raise NotFoundError(f"--lv {name}: there is no LVM2 physical volume here")
    vg = read_vg(source, label)
    return LvSource(source, vg, vg.get(name))


def volume_names(source: BlockSource) -> str:
    """The visible LVs of the PV in ``source`` as ``vg/a, vg/b`` (or why they cannot be listed)."""
    source, label = _pv(source)
    if label is None:
        return "none"
    try:
        vg = read_vg(source, label)
    except UnsupportedError as e:
        return f"unreadable: {str(e).split('; image it in full')[0]}"
    return ", ".join(lv.full_name for lv in vg.lvs if "VISIBLE" in lv.status) or "none"


def logical_volumes(source: BlockSource) -> dict[str, LvSource]:
    """``{mapper name: LV}`` of every LV readable from the PV in ``source``; ``{}`` when it is no PV or
    its metadata cannot be read (whoever serves the raw bytes still can)."""
    try:
        source, label = _pv(source)
        if label is None:
            return {}
        vg = read_vg(source, label)
    except UnsupportedError:
        return {}
    return {lv.mapper_name: LvSource(source, vg, lv) for lv in vg.lvs if unreadable_reason(vg, lv) is None}
