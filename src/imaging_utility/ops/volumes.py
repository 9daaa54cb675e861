"""The volumes inside a disk image by name: what ``serve-proxy`` exports and ``mount`` shows beside the whole
disk, and what ``ls``/``extract``/``webdav --volume NAME`` open.

Named as Linux names their devices, so that an export or a FUSE file is found where a user looks for the
device: ``p1``, ``p2``… (the partitions), ``ldm_vol_GROUP_NAME`` (a Windows dynamic disk's volumes, as libldm
names them), ``imsm_NAME`` and ``imsm_NAMEp1``… (an Intel RST RAID-1 volume held whole by this member, and
its partitions: ``/dev/md/NAME`` and its partitions once mdadm assembles it) and ``vg-lv`` (each LVM2
logical volume in any of them, as device-mapper names it).  On a firmware RAID member the partition table at
the disk's start is the first volume's: its partitions are offered only where they are this disk's bytes.
"""

from __future__ import annotations

import logging

from ..blocks import BlockSource
from ..errors import CorruptImageError, UnsupportedError, UsageError
from ..filesystems.imsm import check_table, raid1_volumes
from ..filesystems.lvm_source import logical_volumes
from ..partitions import PartitionTable, partition_source, read_partitions
from ..partitions.ldm_source import dynamic_volumes

log = logging.getLogger(__name__)

__all__ = ["lv_volumes", "named_volume", "named_volumes"]


def named_volumes(source: BlockSource, table: PartitionTable | None = None) -> dict[str, BlockSource]:
    """``{"p1": <partition 1>, …, "ldm_vol_G_V": …, "imsm_NAME": …, "imsm_NAMEp1": …, "vg0-root": …}`` of the
    disk in ``source`` (``table``: its partition table, when already read)."""
    table = table if table is not None else read_partitions(source)
    out: dict[str, BlockSource] = {}
    try:
        check_table(source, max((p.end for p in table.partitions), default=0))
    except UnsupportedError as e:
        if table.partitions:
            log.warning("the partitions of the table at the disk's start are not offered: %s", e)
    else:
        out.update({f"p{p.number}": partition_source(source, p.number, table) for p in table.partitions})
    out.update(dynamic_volumes(source, table))
    for name, volume in raid1_volumes(source).items():
        out[name] = volume
        try:
            inner = read_partitions(volume)
        except (CorruptImageError, UnsupportedError) as e:
            log.warning("the partitions of %s are not offered: %s", name, e)
            continue
        out.update({f"{name}p{p.number}": partition_source(volume, p.number, inner) for p in inner.partitions})
    return {**out, **lv_volumes({"": source, **out})}


def lv_volumes(volumes: dict[str, BlockSource]) -> dict[str, BlockSource]:
    """Each readable logical volume of an LVM2 physical volume among ``volumes``, by its device-mapper name
    (``vg0-root``)."""
    out: dict[str, BlockSource] = {}
    for source in volumes.values():
        for name, lv in logical_volumes(source).items():
            out.setdefault(name, lv)
    return out


def named_volume(source: BlockSource, name: str) -> BlockSource:
    """The volume ``named_volumes`` calls ``name`` (``p2``, ``imsm_Datap1``, ``vg0-root``…); ``UsageError``
    listing the names there are."""
    found = named_volumes(source)
    if name not in found:
        listing = ", ".join(found) or "none: not a partitioned disk, nor a volume manager's"
        raise UsageError(f"no volume named {name!r} in this image (volumes: {listing})")
    return found[name]
