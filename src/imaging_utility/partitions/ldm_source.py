"""A Windows dynamic volume (LDM) as a ``BlockSource``, read through its pieces on this disk (``ldm.py``)."""

from __future__ import annotations

import bisect

from ..blocks import BlockSource, MappedSource
from ..errors import NotFoundError, UnsupportedError
from .ldm import LdmVolume, read_ldm
from .table import PartitionTable

__all__ = ["LdmVolumeSource", "dynamic_volumes", "find_volume"]


def find_volume(source: BlockSource, table: PartitionTable, name: str) -> LdmVolumeSource:
    """Dynamic volume ``name`` (``Volume1`` or ``GROUP/Volume1``) of the disk in ``source``.  Raises
    ``NotFoundError`` (no such volume, not a dynamic disk) or ``UnsupportedError`` (damaged database, a
    volume not readable from this disk alone)."""
    db = read_ldm(source, table)
    if db is None:
        raise NotFoundError(f"--lv {name}: this disk is not a Windows dynamic disk")
    vol = db.get(name)
    if vol.why_not is not None:
        raise UnsupportedError(f"dynamic volume {db.group}/{vol.name} cannot be read from this disk: it is "
                               f"{vol.why_not}")
    return LdmVolumeSource(source, vol)


class LdmVolumeSource(MappedSource):
    """A dynamic volume's bytes, read through its pieces on the disk ``base``; thread-safe."""

    def __init__(self, base: BlockSource, volume: LdmVolume) -> None:
        assert volume.why_not is None
        self.base, self.volume = base, volume
        self._starts = [v for v, _, _ in volume.extents]

    @property
    def size(self) -> int:
        return self.volume.size

    def _map(self, offset: int, want: int) -> tuple[int, int]:
        vol_off, disk_off, length = self.volume.extents[bisect.bisect_right(self._starts, offset) - 1]
        return disk_off + offset - vol_off, min(want, vol_off + length - offset)


def dynamic_volumes(source: BlockSource, table: PartitionTable) -> dict[str, LdmVolumeSource]:
    """``{"ldm_vol_GROUP_NAME": volume}`` (libldm's device-mapper names) of every volume readable from the
    dynamic disk in ``source``; ``{}`` when it is none or its database cannot be read (whoever serves the
    raw bytes still can)."""
    try:
        db = read_ldm(source, table)
    except UnsupportedError:
        return {}
    if db is None:
        return {}
    return {f"ldm_vol_{db.group}_{v.name}".replace("/", "_"): LdmVolumeSource(source, v)
            for v in db.volumes if v.why_not is None}
