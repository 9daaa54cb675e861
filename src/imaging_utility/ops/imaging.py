"""The ``image`` use case as the CLI and the GUI both run it: one request, the CLI's defaults and checks.

``ImageRequest`` holds what a user asks for (already parsed into numbers);
``run_image`` opens the source, checks its mounts, reads its identity, applies
``--offset/--length``, ``--used-only``, ``--rescue`` and the rate limits, and
calls ``capture``.  ``ImageRequest.command()`` is the equivalent command line,
which the GUI shows so a job can be repeated in a script.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..blocks import BlockSource, WindowSource
from ..devices.blockdev import parent_disk
from ..devices.identity import identity_mismatch, source_identity
from ..devices.mounts import check_source_mounts
from ..devices.pacing import AdaptiveThrottle, device_name
from ..devices.source import FileSource
from ..devices.throttle import Throttle
from ..errors import Error, RefusedError, UnsupportedError, UsageError
from ..filesystems import FilesystemInfo, allocation_map
from ..filesystems.signatures import firmware_raid
from ..format import c_image as c
from ..image.digests import DEFAULT
from ..partitions import read_partitions
from ..progress import JobControl, ProgressCallback, no_progress
from ..storage import is_remote
from ..storage.destcheck import refuse_source_as_dest
from ..storage.local import STDOUT
from ..units import format_size
from .capture import CaptureOptions, CaptureResult, Pacer, capture
from .diskmap import apply_disk_plan, partition_table_of, plan_disk, plan_partition
from .reading import chunk_reader, read_direct_when_safe

PROGRAM = "imaging-utility"
USED_ONLY_MODES = (None, "yes", "auto")


def default_threads() -> int:
    return os.cpu_count() or 2


@dataclass
class ImageRequest:
    """One ``image`` job.  Field defaults are the command line's defaults."""

    source: str
    dest: str
    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    level: int = c.DEFAULT_LEVEL
    threads: int = field(default_factory=default_threads)
    split_size: int | None = None
    digests: tuple[str, ...] = DEFAULT
    force: bool = False
    resume: bool = False
    used_only: str | None = None  # None (full), "yes" (fail without a known filesystem) or "auto"
    offset: int = 0
    length: int | None = None
    direct: bool = False
    buffered: bool = False  # not even whole chunks of a block device read with O_DIRECT
    rescue: bool = False
    retries: int = 1
    max_throughput: int | None = None
    adaptive_rate_limit: bool = False
    allow_mounted: bool = False

    def options(self) -> CaptureOptions:
        """The capture options, validated (``UsageError`` names the bad option)."""
        if not self.source or not self.dest:
            raise UsageError("image needs a SOURCE and a DEST")
        if self.force and self.resume:
            raise UsageError("--force and --resume exclude each other")
        if self.direct and self.buffered:
            raise UsageError("--direct and --buffered exclude each other")
        if self.used_only not in USED_ONLY_MODES:
            raise UsageError(f"--used-only must be one of yes, auto, not {self.used_only!r}")
        if self.retries < 0:
            raise UsageError("--retries must be 0 or more")
        if self.offset < 0 or (self.length is not None and self.length <= 0):
            raise UsageError("--offset must be 0 or more and --length more than 0")
        if self.max_throughput is not None and self.max_throughput < 1:
            raise UsageError("--max-throughput must be at least 1 byte per second")
        if self.dest == STDOUT and (self.resume or self.split_size or self.force):
            raise UsageError("an image written to standard output (DEST '-') cannot be resumed or split; "
                             "drop --resume/--split-size/--force")
        opts = CaptureOptions(chunk_size=self.chunk_size, level=self.level, threads=self.threads,
                              split_size=self.split_size, digests=self.digests, force=self.force,
                              resume=self.resume)
        opts.validate()
        return opts

    def command(self, *, resume: bool | None = None) -> list[str]:
        """The equivalent command line (defaults left out); ``resume=True`` gives the one that continues it."""
        d = ImageRequest(self.source, self.dest)
        argv = [PROGRAM, "image"]
        if self.used_only == "yes":
            argv.append("--used-only")
        elif self.used_only == "auto":
            argv.append("--used-only=auto")
        pairs: list[tuple[str, object, object, Callable[[Any], str]]] = [
            ("--chunk-size", self.chunk_size, d.chunk_size, format_size),
            ("--level", self.level, d.level, str),
            ("--threads", self.threads, d.threads, str),
            ("--split-size", self.split_size, None, format_size),
            ("--hash", self.digests, d.digests, lambda v: ",".join(v) or "none"),
            ("--offset", self.offset, 0, format_size),
            ("--length", self.length, None, format_size),
            ("--retries", self.retries if self.rescue else 1, 1, str),
            ("--max-throughput", self.max_throughput, None, format_size),
        ]
        for flag, value, default, spell in pairs:
            if value != default and value is not None:
                argv += [flag, spell(value)]
        for flag, on in (("--direct", self.direct), ("--buffered", self.buffered), ("--rescue", self.rescue),
                         ("--adaptive-rate-limit", self.adaptive_rate_limit),
                         ("--allow-mounted", self.allow_mounted)):
            if on:
                argv.append(flag)
        resume = self.resume if resume is None else resume
        if resume:
            argv.append("--resume")
        elif self.force:
            argv.append("--force")
        return [*argv, self.source, self.dest]

    def command_line(self, *, resume: bool | None = None) -> str:
        return shlex.join(self.command(resume=resume))


def run_image(req: ImageRequest, progress: ProgressCallback = no_progress, control: JobControl | None = None,
              warn: Callable[[str], None] = lambda message: None) -> CaptureResult:
    """Image ``req.source`` into ``req.dest``; ``warn`` gets one line per thing the user should know."""
    opts = req.options()
    with FileSource(req.source, direct=req.direct) as file_source:
        for message in check_source_mounts(req.source, req.allow_mounted):
            warn(message)
        source: BlockSource = file_source
        opts.identity = source_identity(req.source, file_source)
        if not is_remote(req.dest) and req.dest != STDOUT:
            refuse_source_as_dest(file_source.fd, req.dest, opts.identity.get("backing_file"))
        opts.identity_check = identity_mismatch
        if req.offset or req.length:
            length = req.length if req.length is not None else file_source.size - req.offset
            if req.offset < 0 or length <= 0 or req.offset + length > file_source.size:
                raise UsageError(f"--offset {req.offset} / --length {length} lie outside {req.source} "
                                 f"({file_source.size} bytes)")
            source = WindowSource(file_source, req.offset, length)
            opts.identity.update(window_offset=req.offset, window_length=length)
        auto = req.used_only == "auto"
        # a Windows dynamic disk's partition device is mapped through its disk's LDM database
        if req.used_only and not (source is file_source and _dynamic_partition(req.source, file_source, opts,
                                                                               auto, warn)):
            _use_allocation_map(source, opts, auto, req.rescue, warn)
        # the pipeline paces the reads (opts.throttle): the reader itself is not throttled
        if not req.buffered:
            read_direct_when_safe(file_source, req.source)
        opts.chunk_reader = chunk_reader(source, req.source, req.rescue, req.retries, None, opts.allocation,
                                         opts.chunk_size)
        opts.throttle = _pacer(req)
        return capture(source, req.dest, opts, progress, control)


def _pacer(req: ImageRequest) -> Pacer | None:
    if req.adaptive_rate_limit:
        return AdaptiveThrottle(req.max_throughput, device_name(req.source))
    if req.max_throughput:
        return Throttle(req.max_throughput)
    return None


def _dynamic_partition(path: str, source: FileSource, opts: CaptureOptions, fallback: bool,
                       warn: Callable[[str], None]) -> bool:
    """True when ``source`` is the block device of a Windows dynamic disk's partition, whose map (the LDM
    database is on the whole disk, outside the partition) is then set in ``opts``; the filesystem at the
    partition's start is not its map.  Raises ``UnsupportedError`` when it cannot be mapped (auto: full)."""
    found = parent_disk(path) if source.is_block_device else None
    if found is None:
        return False
    disk_path, start = found
    try:
        with FileSource(disk_path) as disk:
            table = read_partitions(disk)
            part = next((p for p in table.partitions if p.offset == start and p.length == source.size), None)
            if part is None or not part.dynamic:
                return False
            plan = plan_partition(disk, part, table=table)
    except (OSError, Error):
        return False  # the disk cannot be read: the partition is planned on its own
    if plan.used is None:
        what = plan.reason or "holding the LDM database of a Windows dynamic disk, no filesystem"
        why = f"{path} is partition {part.number} of {disk_path}, {what}"
        if not fallback:
            raise UnsupportedError(f"{why}; image it in full without --used-only")
        warn(f"{why}; imaging in full (--used-only=auto)")
        return True
    if plan.filesystem is not None:
        _warn_volumes(plan.filesystem, warn)
    opts.allocation = plan.used
    opts.filesystem = dataclasses.asdict(plan.filesystem) if plan.filesystem is not None else None
    return True


def _use_allocation_map(source: BlockSource, opts: CaptureOptions, fallback: bool, rescue: bool,
                        warn: Callable[[str], None]) -> None:
    table = partition_table_of(source)
    if table is None and firmware_raid(source) is not None:  # an IMSM RAID-1 member maps through its volumes
        plan = plan_disk(source, tolerate_read_errors=rescue)
        if plan.whole is not None and plan.whole.used is not None:
            for message in plan.warnings:
                warn(message)
            apply_disk_plan(opts, plan)
            return
    if table is not None:  # a whole disk: one image, each partition used-only where its filesystem is known
        try:
            plan = plan_disk(source, table, tolerate_read_errors=rescue)
        except RefusedError as e:
            if not fallback:
                raise
            warn(f"{e}; imaging in full (--used-only=auto)")
            return
        for message in plan.warnings:
            warn(message)
        apply_disk_plan(opts, plan)
        return
    try:
        info, amap = allocation_map(source)
    except UnsupportedError as e:
        if not fallback:
            raise
        warn(f"{e}; imaging in full (--used-only=auto)")
        return
    for message in info.warnings:
        warn(message)
    opts.allocation = amap
    opts.filesystem = dataclasses.asdict(info)
    _warn_volumes(info, warn)


def _warn_volumes(info: FilesystemInfo, warn: Callable[[str], None]) -> None:
    """One line per volume kept in full (LVM2 LVs, an MD array, dynamic volumes), with why."""
    for vol in info.volumes:
        if vol.note:
            warn(f"{vol.name}: {vol.note}")


def capture_summary(result: CaptureResult) -> dict[str, Any]:
    """The JSON-able summary of a finished capture (``image --json``)."""
    ev = result.event
    paused = ev.paused_seconds if ev is not None else 0.0
    active = max(result.elapsed - paused, 1e-9)
    return {
        "image": result.paths,
        "source_size": result.source_size,
        "image_bytes": result.image_bytes,
        "ratio": round(result.image_bytes / result.source_size, 4) if result.source_size else None,
        "chunks": result.chunks,
        "zero_chunks": result.zero_chunks,
        "read_bytes": result.read_bytes,
        "used_bytes": result.used_bytes,
        "digests": result.digests,
        "seconds": round(result.elapsed, 3),
        "paused_seconds": round(paused, 3),
        "throughput_mib_s": round((result.source_size - result.resumed_at) / active / 2**20, 1),
        "resumed_at": result.resumed_at,
        "zero_bytes": ev.zero_bytes if ev is not None else 0,
        "unallocated_bytes": ev.unallocated_bytes if ev is not None else 0,
        "bad_sectors": ev.bad_sectors if ev is not None else 0,
        "bad_ranges": [{"offset": o, "length": n} for o, n in result.bad_ranges],
        "rate_limit": result.pacing,
    }
