"""Image a ``BlockSource`` into an image file: the ``image`` command's engine.

This module sets a capture up: options, the header, a fresh or resumed writer.
The pipeline that reads, compresses, hashes and writes the chunks (and pauses,
cancels and paces) is ``_pipeline.run_chunks``.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import __version__
from ..blocks import BlockSource
from ..errors import RefusedError, ResumeMismatchError, UsageError
from ..extents import AllocationMap
from ..format import c_image as c
from ..format.codec import Codec, zstd_library_version
from ..format.metaframe import Header
from ..image.digests import DEFAULT, Digests
from ..image.recover import read_header, recover
from ..image.writer import ImageWriter
from ..limits import threads_within
from ..progress import JobControl, ProgressCallback, ProgressEvent, no_progress
from ..storage import discard, existing_outputs, is_remote, open_partial
from ..storage.destcheck import refuse_new_in_dev, refuse_special
from ..storage.destlock import DestLock
from ..storage.local import STDOUT
from ._pipeline import run_chunks, utc_now


class Pacer(Protocol):
    """A source read-rate limit (``devices.throttle.Throttle``, ``devices.pacing.AdaptiveThrottle``)."""

    mode: str

    @property
    def rate(self) -> int: ...

    def consume(self, nbytes: int) -> None: ...

    def observe(self, nbytes: int, seconds: float) -> None: ...

    def waited(self, seconds: float) -> None: ...

    def restart(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


# A reader of one chunk: fills ``buf`` for source bytes [offset, offset+len(buf)) and
# returns the (offset, length) ranges that could not be read (zero-filled).
ChunkReader = Callable[[int, memoryview], list[tuple[int, int]]]


class ChunkObserver(Protocol):
    """Sees every chunk's bytes in order on the digest thread (and a resume's kept chunks first), e.g. to
    compute per-partition digests; adds its result to the trailer's metadata.  In a used-only capture the
    chunks with no used byte are not shown: an observer digests allocated bytes, as the image's do."""

    def update(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...

    def trailer_meta(self) -> dict[str, Any]: ...


@dataclass
class CaptureOptions:
    chunk_size: int = c.DEFAULT_CHUNK_SIZE
    level: int = c.DEFAULT_LEVEL
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    split_size: int | None = None
    digests: tuple[str, ...] = DEFAULT
    force: bool = False
    resume: bool = False
    identity: dict[str, Any] = field(default_factory=dict)
    allocation: AllocationMap | None = None  # used-only: read only these ranges
    filesystem: dict[str, Any] | None = None
    chunk_reader: ChunkReader | None = None  # e.g. rescue reading; default: source.readinto_at
    identity_check: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None
    throttle: Pacer | None = None  # --max-throughput / --adaptive-rate-limit
    extra_meta: dict[str, Any] = field(default_factory=dict)  # more header metadata (e.g. a disk's table)
    observer: ChunkObserver | None = None

    def validate(self) -> None:
        cs = self.chunk_size
        if not (c.MIN_CHUNK_SIZE <= cs <= c.MAX_CHUNK_SIZE) or cs % 4096:
            raise UsageError(
                f"--chunk-size {cs} must be a multiple of 4 KiB between {c.MIN_CHUNK_SIZE} and {c.MAX_CHUNK_SIZE}"
            )
        if not 1 <= self.level <= 22:
            raise UsageError(f"--level {self.level} must be between 1 and 22")
        if self.threads < 1:
            raise UsageError("--threads must be at least 1")
        if self.split_size is not None and self.split_size < 2 * cs:
            raise UsageError(f"--split-size must be at least twice the chunk size ({2 * cs} bytes)")


@dataclass
class CaptureResult:
    paths: list[str]
    source_size: int
    image_bytes: int
    chunks: int
    zero_chunks: int
    read_bytes: int
    digests: dict[str, str]
    elapsed: float
    resumed_at: int  # source byte offset the capture continued from (0 if fresh)
    bad_ranges: list[tuple[int, int]]
    used_bytes: int | None
    event: ProgressEvent | None = None  # the last progress event: skipped bytes, pauses, pipeline
    pacing: dict[str, Any] | None = None  # what the rate limit did


def build_header(source: BlockSource, opts: CaptureOptions) -> Header:
    meta: dict[str, Any] = {
        "created": utc_now(),
        "tool": f"imaging-utility {__version__}",
        "zstd_library": zstd_library_version(),
        "level": opts.level,
        "digests": list(opts.digests),
        "split_size": opts.split_size,
        "hostname": platform.node(),
        "command_line": sys.argv,
        "source": opts.identity,
        **opts.extra_meta,
    }
    flags = 0
    allocation = None
    if opts.allocation is not None:
        flags |= c.HEADER_FLAG_USED_ONLY
        allocation = opts.allocation.encode()
        meta["used_only"] = {
            "filesystem": opts.filesystem or {},
            "used_bytes": opts.allocation.used_bytes,
            "extents": len(opts.allocation),
            "allocation_sha256": opts.allocation.digest(),
            "cluster_size": opts.allocation.cluster_size,
        }
    return Header(opts.chunk_size, source.size, source.sector_size, flags, meta, allocation)


def _mismatch(old: Header, new: Header, opts: CaptureOptions) -> str | None:
    checks: list[tuple[str, object, object]] = [
        ("source size", old.source_size, new.source_size),
        ("chunk size", old.chunk_size, new.chunk_size),
        ("compression level", old.meta.get("level"), new.meta.get("level")),
        ("digests", old.meta.get("digests"), new.meta.get("digests")),
        ("split size", old.meta.get("split_size"), new.meta.get("split_size")),
        ("used-only mode", old.used_only, new.used_only),
    ]
    if (old.version_major, old.version_minor) > (new.version_major, new.version_minor) \
            and (old.version_major, old.version_minor) != c.PRERELEASE_VERSION:
        return (f"it was started by a newer version of the tool (image format {old.version_major}."
                f"{old.version_minor}); continue it with that version")
    for what, a, b in checks:
        if a != b:
            return f"{what} differs: the partial image has {a}, this run has {b}"
    if new.used_only:
        a = old.meta.get("used_only", {}).get("allocation_sha256")
        b = new.meta["used_only"]["allocation_sha256"]
        if a != b:
            return ("the filesystem's allocation changed since the partial image was made "
                    "(allocation map digest differs)")
    check = opts.identity_check or _identity_mismatch
    return check(old.meta.get("source") or {}, opts.identity)


def _identity_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in ("kind", "size", "serial", "wwn", "model", "mtime"):
        if stored.get(key) != current.get(key):
            return (f"source {key} differs: the partial image has {stored.get(key)!r}, "
                    f"this source has {current.get(key)!r}")
    return None


def _open_writer(source: BlockSource, dest: str, opts: CaptureOptions, codec: Codec,
                 progress: ProgressCallback, discards: list[threading.Thread | None], lock: DestLock,
                 ) -> tuple[ImageWriter, Digests, int, list[tuple[int, int]]]:
    header = build_header(source, opts)
    if dest == STDOUT:
        if opts.resume or opts.split_size is not None:
            raise UsageError("an image written to standard output cannot be split or resumed")
        return ImageWriter.create(dest, None, header), Digests(opts.digests), 0, []
    existing = existing_outputs(dest)
    if not is_remote(dest):
        refuse_new_in_dev(dest)
        for path in existing:  # a device node, a directory: never replaced or resumed
            refuse_special(path)
        for path in existing:  # another run writing DEST stops here, before any change
            lock.add_path(path)
    if existing and opts.resume:
        partial = open_partial(dest, opts.split_size, lock)
        try:
            old = read_header(partial)
            if old is not None:
                reason = _mismatch(old, header, opts)
                if reason:
                    raise ResumeMismatchError(f"cannot resume {dest}: {reason}; start over with --force")
                total = source.size
                ev = ProgressEvent("resume-scan", 0, total)

                def scanned(done: int) -> None:
                    ev.done = min(done, total)
                    progress(ev)

                rec = recover(partial, old, opts.digests, codec, opts.threads, scanned, opts.observer)
                return rec.writer, rec.digests, rec.chunks_done, rec.bad_ranges
        finally:
            partial.close()
        discards.append(discard(dest))
    elif existing and not opts.force:
        raise RefusedError(f"{existing[0]} already exists; use --force to overwrite it or --resume to continue it")
    elif existing:
        discards.append(discard(dest))
    return ImageWriter.create(dest, opts.split_size, header, lock), Digests(opts.digests), 0, []


def capture(source: BlockSource, dest: str, opts: CaptureOptions,
            progress: ProgressCallback = no_progress, control: JobControl | None = None) -> CaptureResult:
    """Image ``source`` into ``dest``.  ``control`` pauses (between chunks, every frame before it
    written and synced, nothing read while paused) or cancels (``Interrupted``, the partial image
    kept for ``--resume``) from another thread."""
    opts.validate()
    opts.threads = threads_within(opts.threads, opts.chunk_size, fixed=4)  # (2 × threads + 4) chunk buffers
    started = time.monotonic()
    codec = Codec(opts.level)
    discards: list[threading.Thread | None] = []
    try:
        with DestLock("image") as lock:
            writer, digests, first_chunk, bad = _open_writer(source, dest, opts, codec, progress, discards, lock)
            try:
                out = run_chunks(source, dest, opts, codec, writer, digests, first_chunk, bad, progress, started,
                                 control)
            finally:
                writer.close()
    finally:
        for thread in discards:
            if thread is not None:
                thread.join()
    amap = opts.allocation
    return CaptureResult(
        paths=out.paths, source_size=source.size, image_bytes=writer.bytes_written,
        chunks=-(-source.size // opts.chunk_size), zero_chunks=out.zero_chunks, read_bytes=out.read_bytes,
        digests=digests.hexdigests(), elapsed=time.monotonic() - started, resumed_at=out.event.start_done,
        bad_ranges=out.bad_ranges, used_bytes=amap.used_bytes if amap is not None else None, event=out.event,
        pacing=opts.throttle.stats() if opts.throttle is not None else None,
    )
