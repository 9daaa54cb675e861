"""Restore one partition of a whole-disk image onto an existing partition (block device) or a file.

The rest of the disk is not touched.  A device smaller than the partition is refused (exit 9); a larger
one keeps its extra bytes (the filesystem keeps its own size).  Only stored data is written (free space
of a used-only partition is skipped on a device, left as holes in a file), and ``verify`` compares the
partition's digest read back from the target.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._io import drop_cached
from ..devices.throttle import Throttle
from ..image.reader import ImageReader
from ..partitions import Partition, read_partitions
from ..progress import ProgressCallback, no_progress
from ..storage.destlock import DestLock
from .restore import open_target, target_kind
from .restore_check import PartitionCheck, verify_written
from .restore_writer import FREE_SKIP, CorruptChunk, WriteReport, ensure_size, write_error, write_stored
from .target import check_device_target


@dataclass
class PartitionRestoreResult:
    target: str
    partition: Partition
    is_device: bool
    bytes_written: int
    bytes_zeroed: int
    bytes_free: int
    elapsed: float
    corrupt: list[CorruptChunk] = field(default_factory=list)
    checks: list[PartitionCheck] = field(default_factory=list)


_TOO_SMALL = "smaller than the partition ({size} bytes); choose a partition at least as large"


def restore_partition(reader: ImageReader, number: int, target: str, *, force: bool = False,
                      confirm: Callable[[Partition], bool] | None = None, free: str = FREE_SKIP,
                      verify: bool = False, continue_on_error: bool = False, threads: int | None = None,
                      throttle: Throttle | None = None,
                      progress: ProgressCallback = no_progress) -> PartitionRestoreResult:
    """Write partition ``number`` of the disk image to ``target`` (a device only if ``confirm(part)``)."""
    started = time.monotonic()
    part = read_partitions(reader).get(number)
    kind = target_kind(target)
    device = kind == "device"
    if device:
        check_device_target(target)
    with DestLock("restore target") as lock:
        fd = open_target(target, kind, part.length, force, device and confirm is not None and confirm(part), lock,
                         unconfirmed="", too_small=_TOO_SMALL, inputs=reader.paths)
        report = _write(reader, fd, target, part, device, free, continue_on_error, threads, throttle, progress)
    result = PartitionRestoreResult(target, part, device, report.bytes_written, report.bytes_zeroed,
                                    report.bytes_free, time.monotonic() - started, report.corrupt)
    if verify and not report.corrupt:
        result.checks = verify_written(reader, target, device, [(number, part.offset, part.length)],
                                       shift=-part.offset)
    return result


def _write(reader: ImageReader, fd: int, target: str, part: Partition, device: bool, free: str,
           continue_on_error: bool, threads: int | None, throttle: Throttle | None,
           progress: ProgressCallback) -> WriteReport:
    try:
        report = write_stored(reader, fd, target, start=part.offset, length=part.length, device=device,
                              free=free, continue_on_error=continue_on_error,
                              threads=threads or os.cpu_count() or 2, throttle=throttle, progress=progress)
        if device:
            try:
                os.fsync(fd)
            except OSError as e:
                raise write_error(e, target, 0) from None
            drop_cached(fd, part.offset, part.length)
        else:
            ensure_size(fd, target, part.length)
    finally:
        os.close(fd)
    return report
