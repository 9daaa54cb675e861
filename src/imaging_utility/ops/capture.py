"""Image a ``BlockSource`` into an image file: the ``image`` command's engine.

Pipeline (DESIGN §4): this thread reads chunk *i* into a reused buffer and
hands it to the compression pool and to the single digest thread; finished
frames are written strictly in chunk order.  Memory is bounded by
``(2 × threads + 4) × chunk_size``.  All-zero chunks, and chunks the allocation
map says are unused, become one precomputed frame with no compression work.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import __version__
from ..blocks import BlockSource
from ..errors import Interrupted, RefusedError, ResumeMismatchError, UsageError
from ..extents import AllocationMap, ExtentKind
from ..format import c_image as c
from ..format.codec import Codec, zstd_library_version
from ..format.metaframe import Event, Header, Trailer
from ..image.digests import DEFAULT, Digests
from ..image.recover import read_header, recover
from ..image.writer import ImageWriter
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..storage import discard, existing_outputs, is_remote, open_partial
from ..storage.destlock import DestLock
from ..storage.local import STDOUT

Framed = tuple[bytes, int]  # a data frame and the CRC-32 of its bytes

# A reader of one chunk: fills ``buf`` for source bytes [offset, offset+len(buf)) and
# returns the (offset, length) ranges that could not be read (zero-filled).
ChunkReader = Callable[[int, memoryview], list[tuple[int, int]]]


class ChunkObserver(Protocol):
    """Sees every chunk's bytes in order on the digest thread (and a resume's kept chunks first), e.g. to
    compute per-partition digests; adds its result to the trailer's metadata."""

    def update(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...

    def trailer_meta(self) -> dict[str, Any]: ...


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    for path in [] if is_remote(dest) else existing:  # another run writing DEST stops here, before any change
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
            progress: ProgressCallback = no_progress) -> CaptureResult:
    opts.validate()
    started = time.monotonic()
    codec = Codec(opts.level)
    discards: list[threading.Thread | None] = []
    try:
        with DestLock("image") as lock:
            writer, digests, first_chunk, bad = _open_writer(source, dest, opts, codec, progress, discards, lock)
            try:
                return _run(source, dest, opts, codec, writer, digests, first_chunk, bad, progress, started)
            finally:
                writer.close()
    finally:
        for thread in discards:
            if thread is not None:
                thread.join()


def _run(source: BlockSource, dest: str, opts: CaptureOptions, codec: Codec, writer: ImageWriter,
         digests: Digests, first_chunk: int, bad: list[tuple[int, int]], progress: ProgressCallback,
         started: float) -> CaptureResult:
    size, cs = source.size, opts.chunk_size
    n_chunks = -(-size // cs)
    amap = opts.allocation
    zero_bytes = bytes(cs)
    zeros = memoryview(zero_bytes)
    n_buffers = int(os.environ.get("IU_NBUF", 2 * opts.threads + 4))
    free: deque[bytearray] = deque(bytearray(cs) for _ in range(n_buffers))
    read_chunk = opts.chunk_reader or _plain_reader(source)
    ev = ProgressEvent("image", min(size, first_chunk * cs), size, writer.bytes_written, started=started)
    zero_chunks = 0
    read_bytes = 0
    zero_crcs: dict[int, int] = {}

    def zero_framed(length: int) -> Framed:
        frame = codec.zero_frame(length)
        crc = zero_crcs.get(length)
        if crc is None:
            crc = zero_crcs[length] = zlib.crc32(frame)
        return frame, crc

    observer = opts.observer

    def feed(view: memoryview, offset: int) -> None:
        digests.update_chunk(view, offset, amap)
        if observer is not None:
            observer.update(view, offset)

    def compress(view: memoryview) -> Framed:
        frame = codec.compress(view)
        return frame, zlib.crc32(frame)
    # Each pending entry: ((frame, crc) or its future, digest future, buffer or None, length, bad ranges)
    pending: deque[tuple[Future[Framed] | Framed, Future[None], bytearray | None, int, list[tuple[int, int]]]]
    pending = deque()

    def retire_one() -> None:
        frame_or_fut, hashed, buf, length, bad_here = pending.popleft()
        frame, crc = frame_or_fut if isinstance(frame_or_fut, tuple) else frame_or_fut.result()
        hashed.result()
        writer.add_chunk(frame, length, crc)
        if bad_here:
            writer.add_event(Event(writer.chunks_written - 1, bad_here))
        if buf is not None:
            free.append(buf)
        ev.done = min(size, ev.done + length)
        ev.output_bytes = writer.bytes_written
        ev.read_bytes = read_bytes
        progress(ev)

    with ThreadPoolExecutor(opts.threads, thread_name_prefix="compress") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="digest") as hasher:
        try:
            for i in range(first_chunk, n_chunks):
                off = i * cs
                length = min(cs, size - off)
                used = [(off, length)] if amap is None else amap.used_in(off, length)
                if used and amap is None and _is_hole(source, off, length):
                    used = []  # a hole of a sparse file: zeros, without reading them
                if not used:
                    zero_chunks += 1
                    pending.append((zero_framed(length),
                                    hasher.submit(feed, zeros[:length], off),
                                    None, length, []))
                else:
                    while not free:
                        retire_one()
                    buf = free.popleft()
                    view = memoryview(buf)[:length]
                    bad_here = _fill(view, off, used, read_chunk, zeros)
                    read_bytes += sum(n for _, n in used)
                    bad.extend(bad_here)
                    if (buf == zero_bytes) if length == cs else (bytes(view) == zero_bytes[:length]):
                        zero_chunks += 1
                        pending.append((zero_framed(length),
                                        hasher.submit(feed, view, off),
                                        buf, length, bad_here))
                    else:
                        pending.append((pool.submit(compress, view),
                                        hasher.submit(feed, view, off),
                                        buf, length, bad_here))
                while pending and (len(pending) > n_buffers or _done(pending[0][0])):
                    retire_one()
            while pending:
                retire_one()
        except KeyboardInterrupt:
            _abandon(pending)
            writer.sync()
            if dest == STDOUT:
                raise Interrupted(f"interrupted at {ev.done} of {size} bytes; an image streamed to standard "
                                  "output cannot be resumed: run it again") from None
            raise Interrupted(
                f"interrupted at {ev.done} of {size} bytes; the partial image {dest} is kept: "
                "resume with --resume (same source, DEST and options)"
            ) from None
        except BaseException:
            _abandon(pending)
            raise
    trailer_meta = {
        "finished": utc_now(),
        "digests": digests.hexdigests(),
        "digest_covers": "allocated bytes in volume order" if amap is not None else "all image bytes",
        "stats": {"chunks": n_chunks, "zero_chunks_this_run": zero_chunks, "read_bytes_this_run": read_bytes},
        **(observer.trailer_meta() if observer is not None else {}),
    }
    paths = writer.finish(Trailer(size, n_chunks, trailer_meta, sorted(bad)))
    progress(ev)
    return CaptureResult(
        paths=paths, source_size=size, image_bytes=writer.bytes_written, chunks=n_chunks,
        zero_chunks=zero_chunks, read_bytes=read_bytes, digests=digests.hexdigests(),
        elapsed=time.monotonic() - started, resumed_at=min(size, first_chunk * cs), bad_ranges=sorted(bad),
        used_bytes=amap.used_bytes if amap is not None else None,
    )


def _is_hole(source: BlockSource, offset: int, length: int) -> bool:
    return all(e.kind is ExtentKind.ZERO for e in source.extents(offset, length))


def _done(item: Future[Framed] | Framed) -> bool:
    return isinstance(item, tuple) or item.done()


def _abandon(pending: deque[Any]) -> None:
    for frame_or_fut, hashed, *_ in pending:
        if isinstance(frame_or_fut, Future):
            frame_or_fut.cancel()
        hashed.cancel()
    pending.clear()


def _plain_reader(source: BlockSource) -> ChunkReader:
    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        source.readinto_at(offset, buf)
        return []

    return read


def _fill(view: memoryview, off: int, used: list[tuple[int, int]], read_chunk: ChunkReader,
          zeros: memoryview) -> list[tuple[int, int]]:
    """Read the used ranges of one chunk into ``view``; everything else becomes zeros."""
    length = len(view)
    if used == [(off, length)]:
        return read_chunk(off, view)
    view[:] = zeros[:length]
    bad: list[tuple[int, int]] = []
    for o, n in used:
        bad.extend(read_chunk(o, view[o - off : o - off + n]))
    return bad
