"""The allocation map of a whole disk, composed from its partitions (DESIGN §8), and per-partition digests.

Each partition whose filesystem ``filesystems.allocation_map`` knows contributes only its used ranges
(read through a ``WindowSource`` of the partition, so any filesystem registered there becomes used-only
here too); every other byte is kept: the MBR or protective MBR, the gap after it (boot loaders live
there), both GPT copies, EBRs, gaps between partitions, partitions without a known filesystem, and
partitions whose filesystem is damaged or untrusted (one warning line each).  A disk without a table is
one volume.  A table that cannot be trusted (overlapping partitions, partitions past the disk's end) is
refused: used-only imaging could drop bytes one of them uses.

``DiskPlan.meta()`` is the image header's ``disk`` section; the backup manifest copies it
(docs/backup-sets.md).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..blocks import BlockSource, WindowSource
from ..errors import RefusedError, SourceIOError, UnsupportedError
from ..extents import AllocationMap, compose
from ..filesystems import FilesystemInfo, allocation_map, detect, md, signatures
from ..image.digests import Digests
from ..partitions import Partition, PartitionTable, read_partitions
from ..partitions.table import DYNAMIC_WHY
from .capture import CaptureOptions
from .diskmap_imsm import plan_imsm
from .diskmap_ldm import plan_dynamic

DISK_META_VERSION = 1
KEPT_USED = "used-only"
KEPT_SIGNATURE = "signature page"
KEPT_FULL = "full"


@dataclass
class PartitionPlan:
    partition: Partition
    filesystem: FilesystemInfo | None
    used: AllocationMap | None  # partition-relative; None: kept in full
    reason: str | None = None  # why a partition with a filesystem signature is kept in full
    found: str | None = None  # the filesystem found there when it is not mapped ("ntfs")

    @property
    def note(self) -> str | None:
        """``"partition 2 (ntfs): <reason>; kept in full"``; None when nothing needs saying."""
        if self.reason is None:
            return None
        return f"partition {self.partition.number}" + (f" ({self.found})" if self.found else "") + \
            f": {self.reason}; kept in full"

    @property
    def kept(self) -> str:
        if self.used is None:
            return KEPT_FULL
        return KEPT_SIGNATURE if self.filesystem is not None and self.filesystem.type == "swap" else KEPT_USED

    @property
    def used_bytes(self) -> int:
        return self.partition.length if self.used is None else self.used.used_bytes


@dataclass
class DiskPlan:
    size: int
    sector_size: int
    table: PartitionTable
    partitions: list[PartitionPlan]
    allocation: AllocationMap
    volume: FilesystemInfo | None = None  # a disk without a table: its filesystem, if known
    warnings: list[str] = field(default_factory=list)
    whole: PartitionPlan | None = None  # a disk without a table: how it was planned as one volume

    def filesystem_meta(self) -> dict[str, Any]:
        """The header's ``used_only.filesystem`` for a disk."""
        if self.table.scheme is None and self.volume is not None:
            return asdict(self.volume)
        return {"type": f"{self.table.scheme or 'unpartitioned'} disk"}

    def meta(self) -> dict[str, Any]:
        t = self.table
        table: dict[str, Any] = {"type": t.scheme, "disk_id": t.disk_id}
        if t.gpt is not None:
            table.update(first_usable_lba=t.gpt.first_usable_lba, last_usable_lba=t.gpt.last_usable_lba,
                         entry_count=t.gpt.entry_count, entry_size=t.gpt.entry_size,
                         primary_ok=t.gpt.primary_ok, backup_ok=t.gpt.backup_ok)
        elif t.scheme == "mbr":
            table.update(first_usable_lba=1, last_usable_lba=self.size // self.sector_size - 1,
                         extended=None if t.extended is None else {"start": t.extended[0],
                                                                    "length": t.extended[1]},
                         ebrs=list(t.ebrs))
        return {
            "version": DISK_META_VERSION,
            "size": self.size,
            "sector_size": self.sector_size,
            "table": table,
            "partitions": [partition_meta(p, self.sector_size) for p in self.partitions],
            "volume": None if self.volume is None else fs_meta(self.volume),
            "used_bytes": self.allocation.used_bytes,
            "warnings": list(self.warnings),
        }


def type_name(part: Partition) -> str:
    """``"Linux filesystem data"`` from ``"0fc63daf-... (Linux filesystem data)"``."""
    text = part.type
    if text.endswith(")") and " (" in text:
        return text[text.index(" (") + 2 : -1]
    return text


def fs_meta(fs: FilesystemInfo) -> dict[str, Any]:
    return {"type": fs.type, "label": fs.label, "uuid": fs.serial, "cluster_size": fs.cluster_size,
            "size": fs.volume_size}


def partition_meta(plan: PartitionPlan, ss: int) -> dict[str, Any]:
    p = plan.partition
    return {
        "number": p.number, "start": p.offset, "start_sector": p.offset // ss,
        "length": p.length, "sectors": p.length // ss,
        "type_id": p.type_id, "type": type_name(p), "uuid": p.uuid, "name": p.name,
        "attributes": f"0x{p.attributes:016x}", "bootable": p.bootable,
        "filesystem": None if plan.filesystem is None else fs_meta(plan.filesystem),
        "used_bytes": plan.used_bytes, "kept": plan.kept, "note": plan.note,
    }


def _reason(e: Exception) -> str:
    return str(e).split("; image it in full")[0]


def plan_partition(source: BlockSource, part: Partition, tolerate_read_errors: bool = False,
                   table: PartitionTable | None = None) -> PartitionPlan:
    """Map one partition: used-only when its filesystem is known and sound, else kept in full.  A Windows
    dynamic disk's partition is mapped through the LDM database of the disk ``table`` belongs to."""
    window = WindowSource(source, part.offset, part.length)
    try:
        if part.dynamic:
            if table is None:
                return PartitionPlan(part, None, None, DYNAMIC_WHY, "ldm")
            fs, used, why = plan_dynamic(source, part, table)
            return PartitionPlan(part, fs, used, why, "ldm")
        fs = detect(window)
        if fs is None:
            known = signatures.identify(window)  # an encrypted volume, a filesystem not read here, a RAID member
            if known is None:
                return PartitionPlan(part, None, None)
            name, what = known
            return PartitionPlan(part, None, None, what, name)
        info, used = allocation_map(window)
        # what the map kept whole and why, and an LVM2 PV's logical volumes
        return PartitionPlan(part, replace(fs, warnings=info.warnings, volumes=info.volumes), used)
    except UnsupportedError as e:
        return PartitionPlan(part, None, None, _reason(e), _safe_type(window))
    except SourceIOError as e:
        if not tolerate_read_errors:
            raise
        return PartitionPlan(part, None, None, f"its metadata could not be read ({e})")


def _safe_type(window: BlockSource) -> str | None:
    try:
        fs = detect(window)
    except (UnsupportedError, SourceIOError):
        return None
    return None if fs is None else fs.type


def plan_disk(source: BlockSource, table: PartitionTable | None = None, *,
              tolerate_read_errors: bool = False) -> DiskPlan:
    """The composed allocation map of the disk in ``source``.

    Raises:
        RefusedError: the table has overlapping partitions or partitions past the disk's end.
        SourceIOError: reading the table or a filesystem's metadata failed (unless tolerated).
    """
    table = table if table is not None else read_partitions(source)
    size, ss = source.size, source.sector_size
    raid = signatures.firmware_raid(source)
    if raid is not None:  # the table is the array's: not used (an IMSM RAID-1 volume is planned on its own)
        mapped = plan_imsm(source, lambda window: plan_disk(window, tolerate_read_errors=tolerate_read_errors))
        if isinstance(mapped, tuple):
            info, amap, notes = mapped
            whole = PartitionPlan(Partition(0, 0, size, "whole disk", ""), info, amap, None, "imsm")
            return DiskPlan(size, ss, PartitionTable(None, None, ss), [], amap, info, notes, whole)
        note = f"{mapped or raid}: its partition table and filesystems are the array's, not this disk's"
        whole = PartitionPlan(Partition(0, 0, size, "whole disk", ""), None, None, note, "firmware RAID")
        return DiskPlan(size, ss, PartitionTable(None, None, ss), [], AllocationMap.full(size), None,
                        [f"{note}: imaged in full; image the assembled array for used-only"], whole)
    member = md.disk_member(source, [(p.offset, p.length) for p in table.partitions])
    arrays_table = table.scheme is not None and member is not None and member.unmappable() is not None
    if arrays_table:  # the table is a striped array's: not used
        table = PartitionTable(None, None, ss)
    warnings = list(table.warnings)
    if table.scheme is None:
        plan = plan_partition(source, Partition(0, 0, size, "whole disk", ""), tolerate_read_errors)
        if plan.used is not None and plan.filesystem is not None:
            warnings.append(f"no partition table: imaged as one {plan.filesystem.type} volume (used-only)")
            warnings += plan.filesystem.warnings
            amap = plan.used
        else:
            warnings.append(f"its partition table is the array's, not this disk's: imaged in full ({plan.note})"
                            if arrays_table else "no partition table and no known filesystem: imaged in "
                            "full" + (f" ({plan.note})" if plan.note else ""))
            amap = AllocationMap.full(size)
        return DiskPlan(size, ss, table, [], amap, plan.filesystem, warnings, plan)
    problems = table.problems(size)
    if problems:
        raise RefusedError(f"the {table.scheme.upper()} partition table cannot be trusted: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                           + "; image the disk in full (image without --used-only)")
    plans = [plan_partition(source, p, tolerate_read_errors, table) for p in table.partitions]
    warnings += [p.note for p in plans if p.note]
    warnings += [f"partition {p.partition.number}: {w}" for p in plans if p.filesystem for w in p.filesystem.warnings]
    amap = compose(size, [(p.partition.offset, p.partition.length, p.used) for p in plans if p.used is not None],
                   cluster_size=ss)
    return DiskPlan(size, ss, table, plans, amap, None, warnings)


class PartitionDigests:
    """Digests of each partition's stored bytes (its allocated ranges, in order): for a partition kept in
    full that is ``sha256sum`` of the partition.  Fed every chunk in order from one thread (the capture's
    digest thread, or a resume's replay); not thread-safe."""

    def __init__(self, partitions: list[tuple[int, int, int]], allocation: AllocationMap | None,
                 names: tuple[str, ...]) -> None:
        self._parts = sorted(partitions, key=lambda p: p[1])  # (number, offset, length)
        self._starts = [p[1] for p in self._parts]
        self._allocation = allocation
        self._digests = {number: Digests(names) for number, _o, _n in self._parts}

    def update(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        end = offset + len(view)
        i = max(0, bisect_right(self._starts, offset) - 1)
        while i < len(self._parts) and self._parts[i][1] < end:
            number, p_off, p_len = self._parts[i]
            s, e = max(offset, p_off), min(end, p_off + p_len)
            if s < e:
                self._digests[number].update_chunk(view[s - offset : e - offset], s, self._allocation)
            i += 1

    def hexdigests(self) -> dict[str, dict[str, str]]:
        return {str(number): d.hexdigests() for number, d in self._digests.items()}

    def trailer_meta(self) -> dict[str, Any]:
        return {"partition_digests": self.hexdigests()}


def partition_table_of(source: BlockSource) -> PartitionTable | None:
    """The source's MBR/GPT when it is a partitioned disk; None when it is a volume (a filesystem at
    offset 0) or holds no table."""
    try:
        found = detect(source)
    except UnsupportedError:
        found = None  # a damaged filesystem signature at offset 0: a table may still be what is there
    if found is not None:  # a volume, unless it is an MD superblock at the end of a disk with a table
        super_ = md.probe(source) if found.type == "md" else None
        if super_ is None or super_.version not in ("0.90", "1.0"):
            return None
    table = read_partitions(source)
    if table.scheme is None or signatures.firmware_raid(source) is not None:
        return None  # a firmware RAID member: refused as a volume, in one line
    if found is not None:
        member = md.disk_member(source, [(p.offset, p.length) for p in table.partitions])
        if member is not None and member.unmappable() is not None:
            return None  # a striped array's member: refused as a volume, in one line
    return table


def apply_disk_plan(opts: CaptureOptions, plan: DiskPlan) -> None:
    """Make ``opts`` capture the disk used-only with ``plan``: the composed map, the ``disk`` header section
    and per-partition digests in the trailer."""
    opts.allocation = plan.allocation
    opts.filesystem = plan.filesystem_meta()
    opts.extra_meta["disk"] = plan.meta()
    parts = [(p.partition.number, p.partition.offset, p.partition.length) for p in plan.partitions]
    opts.observer = PartitionDigests(parts, plan.allocation, opts.digests)
