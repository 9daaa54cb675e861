"""Restore a whole-disk image onto a block device: plan (checks, what changes), then write.

``plan_disk_restore`` reads the target and refuses (exit 9, nothing written) a device that is in use, of
another sector size, too small for the partitions, smaller without ``allow_smaller``, or holding another
disk's partition table without ``force``; it lists every difference between what the image records and
the target.  ``run_disk_restore`` then writes only stored data (``restore_writer``), rewrites the table
for the target (GPT: both copies for its size, ``partitions/rewrite.py``; MBR kept as it is), fsyncs,
makes the kernel see the new partitions, and with ``verify`` reads every partition back.

Running it again after it was killed writes the same bytes to the same places: the result is the same.
The table is checked against the image's own (disk id, or the same partition layout) so that second run
is not refused as "another disk".
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .._io import drop_cached
from ..devices.blockdev import update_kernel_partitions
from ..devices.identity import source_identity
from ..devices.source import FileSource, block_device_size
from ..devices.throttle import Throttle
from ..errors import RefusedError
from ..image.reader import ImageReader
from ..partitions import PartitionTable, read_partitions
from ..partitions.rewrite import entry_sectors, gpt_writes, mbr_writes, min_target_size, misfits
from ..progress import JobControl, ProgressCallback, no_progress
from .restore_check import PartitionCheck, verify_written
from .restore_writer import FREE_SKIP, CorruptChunk, TargetWriter, write_error, write_stored
from .target import TargetView, check_device_target, inspect_target


@dataclass
class DiskRestorePlan:
    reader: ImageReader
    target: TargetView
    table: PartitionTable  # the image's table
    limit: int  # image bytes [0, limit) are written; the rewritten table goes after
    writes: list[tuple[int, bytes]]  # the table for the target (offset, bytes)
    size_change: str  # "same", "larger", "smaller"
    differences: list[str] = field(default_factory=list)
    new_ids: bool = False


@dataclass
class DiskRestoreResult:
    target: str
    bytes_total: int
    bytes_written: int
    bytes_zeroed: int
    bytes_free: int
    elapsed: float
    table_rewritten: bool
    corrupt: list[CorruptChunk] = field(default_factory=list)
    checks: list[PartitionCheck] = field(default_factory=list)


def _layout(table: PartitionTable) -> list[tuple[int, int, int, str]]:
    return [(p.number, p.offset, p.table_length, p.type_id) for p in table.partitions]


def _same_disk(view: TargetView, table: PartitionTable) -> bool:
    """The target's table is this image's (same id), or one a restore of it wrote (same layout)."""
    t = view.table
    return t.scheme == table.scheme and (t.disk_id == table.disk_id or _layout(t) == _layout(table))


def _differences(reader: ImageReader, view: TargetView, table: PartitionTable) -> list[str]:
    out = []
    if view.size != reader.size:
        out.append(f"size: the image's disk has {reader.size} bytes, the target {view.size}")
    t = view.table
    if t.scheme != table.scheme or t.disk_id != table.disk_id:
        out.append(f"table: the image has {table.scheme} {table.disk_id}, the target "
                   + (f"{t.scheme} {t.disk_id}" if t.scheme else "none"))
    elif _layout(t) != _layout(table):
        out.append("partitions: the target's layout differs from the image's")
    stored: dict[str, Any] = reader.header.meta.get("source") or {}
    try:
        with FileSource(view.path) as src:
            current = source_identity(view.path, src)
    except OSError:
        current = {}
    for key in ("model", "serial", "wwn"):
        a, b = stored.get(key), current.get(key)
        if a and b and a != b:
            out.append(f"device {key}: the image was taken from {a!r}, the target is {b!r}")
    return out


def plan_disk_restore(reader: ImageReader, target: str, *, allow_smaller: bool = False, force: bool = False,
                      new_ids: bool = False) -> DiskRestorePlan:
    """Check ``target`` and work out what a restore of the disk image ``reader`` writes there.

    Raises:
        RefusedError: see the module doc; nothing has been written.
    """
    check_device_target(target)
    view = inspect_target(target)
    table = read_partitions(reader)
    if table.scheme is None:
        raise RefusedError("the image holds no partition table; restore it as a plain image")
    ss = table.sector_size
    if view.sector_size != ss:
        raise RefusedError(f"{target} has {view.sector_size}-byte sectors, the image's disk had {ss}; "
                           "converting a partition table between sector sizes is not supported")
    problems = table.problems(reader.size)
    if problems and view.size != reader.size:
        raise RefusedError(f"the image's partition table cannot be rewritten for another size: {problems[0]}")
    if view.size < min_target_size(table) or misfits(table, view.size):
        why = misfits(table, view.size) or [f"the table needs {min_target_size(table)} bytes"]
        raise RefusedError(f"{target} is too small for the image's partitions ({view.size} bytes): {why[0]}")
    if view.size < reader.size and not allow_smaller:
        raise RefusedError(f"{target} is smaller than the image's disk ({view.size} < {reader.size} bytes); "
                           "every partition fits: add --allow-smaller to restore onto it")
    if not view.blank and not _same_disk(view, table) and not force:
        what = (f"a {view.table.scheme.upper()} table of another disk ({view.table.disk_id})"
                if view.table.scheme else f"a {view.volume.type if view.volume else '?'} filesystem")
        raise RefusedError(f"{target} holds {what}; add --force to overwrite it")
    if table.gpt is not None and not problems:
        writes = gpt_writes(reader, table, view.size, new_ids=new_ids)
        limit = min(reader.size, (view.size // ss - 1 - entry_sectors(table)) * ss)
    else:
        writes = mbr_writes(reader, table, new_ids=new_ids)
        limit = min(reader.size, view.size)
    change = "same" if view.size == reader.size else "larger" if view.size > reader.size else "smaller"
    return DiskRestorePlan(reader, view, table, limit, writes, change, _differences(reader, view, table), new_ids)


def run_disk_restore(plan: DiskRestorePlan, *, free: str = FREE_SKIP, verify: bool = False,
                     continue_on_error: bool = False, threads: int | None = None,
                     throttle: Throttle | None = None, progress: ProgressCallback = no_progress,
                     control: JobControl | None = None) -> DiskRestoreResult:
    """Write the plan (see the module doc).  Raises ``RefusedError`` if the target changed since the plan.
    ``control`` pauses or cancels between chunks, as for a plain restore (``restore_writer.write_stored``)."""
    started = time.monotonic()
    path = plan.target.path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise RefusedError(f"{path} became busy (mounted or in use); nothing was written") from None
        raise write_error(e, path, 0) from None
    try:
        if block_device_size(fd) != plan.target.size:
            raise RefusedError(f"{path} changed size since it was checked; nothing was written")
        report = write_stored(plan.reader, fd, path, start=0, length=plan.limit, device=True, free=free,
                              continue_on_error=continue_on_error, threads=threads or os.cpu_count() or 2,
                              throttle=throttle, progress=progress, control=control)
        _beyond_image(fd, path, plan, free)
        for offset, data in plan.writes:
            try:
                os.pwrite(fd, data, offset)
            except OSError as e:
                raise write_error(e, path, offset) from None
        try:
            os.fsync(fd)
        except OSError as e:
            raise write_error(e, path, 0) from None
        drop_cached(fd)
        update_kernel_partitions(fd, path, kernel_view(plan.table))
    finally:
        os.close(fd)
    result = DiskRestoreResult(path, plan.target.size, report.bytes_written, report.bytes_zeroed,
                               report.bytes_free, time.monotonic() - started, bool(plan.writes), report.corrupt)
    if verify and not report.corrupt:
        result.checks = verify_written(plan.reader, path, True,
                                       [(p.number, p.offset, p.length) for p in plan.table.partitions])
    return result


def kernel_view(table: PartitionTable) -> dict[int, tuple[int, int]]:
    """The partitions Linux lists for ``table``: the data partitions, and an MBR extended container as a
    stub of two 512-byte units (one sector on 4Kn), as ``block/partitions/msdos.c`` adds it."""
    wanted = {p.number: (p.offset, p.length) for p in table.partitions}
    if table.extended is not None and table.extended_number is not None:
        wanted[table.extended_number] = (table.extended[0], min(table.extended[1], max(table.sector_size, 1024)))
    return wanted


def _beyond_image(fd: int, path: str, plan: DiskRestorePlan, free: str) -> None:
    """On a larger target, discard or zero (if asked) what lies between the image's end and the table."""
    if free == FREE_SKIP or plan.target.size <= plan.reader.size:
        return
    out = TargetWriter(fd, path, True, None)
    after = [o for o, _d in plan.writes if o >= plan.reader.size]
    end = min(after) if after else plan.target.size
    if end > plan.reader.size:
        out.span(free, plan.reader.size, end - plan.reader.size)
    out.flush()
