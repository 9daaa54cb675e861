"""``backup-disk``: one used-only whole-disk image per disk, plus the set's manifest.

Each disk becomes ``DIR/<name>.img.zst`` (``diskmap``: partitions with a known filesystem used-only,
everything else in full), captured by the ordinary ``capture`` pipeline, so an image resumes, verifies and
restores like any other.  ``resume`` keeps the disks whose image is finished (after checking they are
still the same devices), continues the one in progress and starts the rest.  Progress is one stream of
events over all disks (operation ``"backup-disk"``); warnings go to ``on_warning`` as they are found.
Callable from Python (the GUI); nothing here prints.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import platform
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..devices.identity import identity_mismatch, source_identity
from ..devices.mounts import check_source_mounts
from ..devices.source import FileSource
from ..devices.throttle import Throttle
from ..errors import (
    CorruptImageError,
    NotFoundError,
    RefusedError,
    ResumeMismatchError,
    UsageError,
    target_error,
)
from ..image.reader import open_image
from ..progress import JobControl, ProgressCallback, ProgressEvent, no_progress
from ..storage.destcheck import refuse_new_in_dev, refuse_source_as_dest
from ._pipeline import utc_now
from .capture import CaptureOptions, CaptureResult, capture
from .diskmap import apply_disk_plan, plan_disk
from .manifest import (
    MANIFEST,
    STATUS_COMPLETE,
    STATUS_RUNNING,
    entry_from_image,
    image_name,
    load_manifest,
    new_manifest,
    pending_entry,
    write_manifest,
)
from .reading import chunk_reader, read_direct_when_safe


@dataclass
class BackupOptions:
    capture: CaptureOptions = field(default_factory=CaptureOptions)  # level, threads, chunk/split size, ...
    rescue: bool = False
    retries: int = 1
    direct: bool = False
    buffered: bool = False  # not even whole chunks read with O_DIRECT
    max_throughput: int | None = None  # bytes/s over all disks
    allow_mounted: bool = False


@dataclass
class DiskBackup:
    name: str
    source: str
    image: list[str]
    kept: bool  # finished in an earlier run (resume)
    result: CaptureResult | None
    entry: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class BackupResult:
    set_dir: str
    manifest: str
    disks: list[DiskBackup]
    elapsed: float
    source_bytes: int
    image_bytes: int

    @property
    def bad_ranges(self) -> int:
        return sum(len(d.entry.get("bad_ranges", [])) for d in self.disks)


def disk_name(path: str) -> str:
    """``sda`` for ``/dev/sda``, ``disk`` for ``disk.raw`` (a name safe as a file name)."""
    base = os.path.basename(os.path.realpath(path)) if path.startswith("/dev/") else os.path.basename(path)
    stem = re.sub(r"\.(raw|img|bin|dd|iso)$", "", base) or base
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip(".") or "disk"


def _names(disks: list[str]) -> list[str]:
    names = [disk_name(d) for d in disks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"two disks would both be saved as {image_name(dupes[0])}; back them up into separate "
                         "directories")
    return names


def _start_manifest(set_dir: str, names: list[str], disks: list[str], opts: BackupOptions) -> dict[str, Any]:
    c = opts.capture
    options = {"level": c.level, "chunk_size": c.chunk_size, "split_size": c.split_size,
               "digests": list(c.digests), "used_only": True, "rescue": opts.rescue}
    existing = os.path.isfile(os.path.join(set_dir, MANIFEST))
    if existing and c.resume:
        manifest = load_manifest(set_dir)
        if [d["name"] for d in manifest["disks"]] != names:
            old = ", ".join(d["name"] for d in manifest["disks"])
            raise ResumeMismatchError(f"cannot resume the set in {set_dir}: it holds disks {old}, this run "
                                      f"names {', '.join(names)}; start over with --force")
        return manifest
    if existing and not c.force:
        raise RefusedError(f"{set_dir} already holds a backup set; use --resume to continue it or --force to "
                           "replace it")
    manifest = new_manifest(options, platform.node())
    manifest["disks"] = [pending_entry(n, d) for n, d in zip(names, disks, strict=True)]
    return manifest


def backup_disks(disks: list[str], set_dir: str, opts: BackupOptions, *,
                 progress: ProgressCallback = no_progress,
                 on_warning: Callable[[str], None] = lambda message: None,
                 control: JobControl | None = None) -> BackupResult:
    """Back up ``disks`` (block devices or disk-image files) into the set directory ``set_dir``.

    ``control`` pauses or cancels the disk being captured (``capture``: the set resumes with ``resume``)."""
    started = time.monotonic()
    opts.capture.validate()
    if not disks:
        raise UsageError("name at least one disk to back up")
    names = _names(disks)
    _make_set_dir(set_dir)
    manifest = _start_manifest(set_dir, names, disks, opts)
    throttle = Throttle(opts.max_throughput) if opts.max_throughput else None
    done: list[DiskBackup] = []
    with ExitStack() as stack:
        sources = []
        for path in disks:
            src = stack.enter_context(FileSource(path, direct=opts.direct))
            for message in check_source_mounts(path, opts.allow_mounted):
                on_warning(message)
            sources.append(src)
        total = sum(s.size for s in sources)
        event = ProgressEvent("backup-disk", 0, total)
        base = 0
        for i, (path, name, src) in enumerate(zip(disks, names, sources, strict=True)):
            relay = _Relay(progress, event, base, sum(d.entry.get("image_bytes", 0) for d in done), name)
            done.append(_one_disk(path, name, src, set_dir, opts, manifest, i, throttle, relay, on_warning,
                                  control))
            base += src.size
        manifest["finished"] = utc_now()
        write_manifest(set_dir, manifest)
    return BackupResult(set_dir, os.path.join(set_dir, MANIFEST), done, time.monotonic() - started, total,
                        sum(d.entry.get("image_bytes", 0) for d in done))


def _make_set_dir(set_dir: str) -> None:
    """Create the set directory (and its parents); one clear error when that cannot be done."""
    refuse_new_in_dev(set_dir)
    try:
        os.makedirs(set_dir, exist_ok=True)
    except FileExistsError:
        raise RefusedError(f"{set_dir} exists and is not a directory; backup-disk writes a set directory "
                           "(give a new or existing directory)") from None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise RefusedError(f"cannot create the set directory {set_dir}: a part of its path is not a "
                               "directory") from None
        raise target_error(e, f"create the set directory {set_dir}") from None


def _finished_image(dest: str, name: str, path: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest entry of a finished image of this disk at ``dest``, or None (missing or partial)."""
    try:
        with open_image(dest) as reader:
            why = identity_mismatch(reader.header.meta.get("source") or {}, identity)
            if why:
                raise ResumeMismatchError(f"cannot resume: {dest} is finished but {why}; start over with --force")
            return entry_from_image(reader, name, path)
    except (NotFoundError, CorruptImageError, FileNotFoundError):
        return None


def _one_disk(path: str, name: str, src: FileSource, set_dir: str, opts: BackupOptions, manifest: dict[str, Any],
              index: int, throttle: Throttle | None, progress: _Relay,
              on_warning: Callable[[str], None], control: JobControl | None) -> DiskBackup:
    dest = os.path.join(set_dir, image_name(name))
    identity = source_identity(path, src)
    if opts.capture.resume:
        entry = _finished_image(dest, name, path, identity)
        if entry is not None:
            manifest["disks"][index] = entry
            write_manifest(set_dir, manifest)
            progress.skip(src.size)
            return DiskBackup(name, path, entry["image"], True, None, entry, list(entry.get("warnings", [])))
    plan = plan_disk(src, tolerate_read_errors=opts.rescue)
    for message in plan.warnings:
        on_warning(f"{name}: {message}")
    copts = dataclasses.replace(opts.capture, extra_meta={}, identity=identity, identity_check=identity_mismatch)
    apply_disk_plan(copts, plan)
    if not opts.buffered:
        read_direct_when_safe(src, path)
    copts.chunk_reader = chunk_reader(src, path, opts.rescue, opts.retries, throttle, copts.allocation,
                                      copts.chunk_size)
    refuse_source_as_dest(src.fd, dest, identity.get("backing_file"))
    manifest["disks"][index] = {**pending_entry(name, path, STATUS_RUNNING), "started": utc_now()}
    write_manifest(set_dir, manifest)
    result = capture(src, dest, copts, progress, control)
    with open_image(dest) as reader:
        entry = entry_from_image(reader, name, path)
    manifest["disks"][index] = entry
    write_manifest(set_dir, manifest)
    assert entry["status"] == STATUS_COMPLETE
    return DiskBackup(name, path, entry["image"], False, result, entry, plan.warnings)


#: What the set's event takes over from the disk's: the pipeline as it is now, and counters summed over disks.
_PIPELINE = ("chunk_size", "workers", "max_workers", "depth", "max_depth", "bottleneck", "paused", "rate_limit",
             "rate_limit_mode")
_COUNTERS = ("paused_seconds", "zero_bytes", "unallocated_bytes", "bad_bytes", "bad_sectors")


class _Relay:
    """Re-emit one disk's capture events as the set's ``backup-disk`` progress."""

    def __init__(self, progress: ProgressCallback, event: ProgressEvent, base: int, out_base: int, name: str) -> None:
        self.progress, self.event, self.base, self.out_base = progress, event, base, out_base
        self.counters = {k: getattr(event, k) for k in _COUNTERS}  # the earlier disks' totals
        event.message = name

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.operation != "image":
            self.progress(ev)  # resume-scan: its own bar
            return
        self.event.done = self.base + ev.done
        self.event.output_bytes = self.out_base + ev.output_bytes
        self.event.read_bytes = ev.read_bytes
        for k in _PIPELINE:
            setattr(self.event, k, getattr(ev, k))
        for k, before in self.counters.items():
            setattr(self.event, k, before + getattr(ev, k))
        self.progress(self.event)

    def skip(self, size: int) -> None:
        self.event.done = self.base + size
        self.progress(self.event)
