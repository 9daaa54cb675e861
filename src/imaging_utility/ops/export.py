"""Export an image, or one partition or window of it, to a virtual disk file: the ``export`` engine.

``open_export_source`` picks the bytes (IMAGE, ``partition``, or ``offset``/``length``) and gathers the
identity the output carries; ``export`` runs the format's writer over them.  The file is written as
``OUT.partial`` (created without following links, locked), fsynced, then renamed to ``OUT`` and the
directory fsynced: an export that fails or is interrupted removes its partial file, and one that is
killed leaves only ``OUT.partial``, never a file that looks complete.

Callable from any front end: nothing here prints; progress goes to the ``progress`` callback (from the
calling thread) as ``ProgressEvent("export", done, total, output_bytes, read_bytes)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, interrupts
from ..blocks import BlockSource, WindowSource
from ..errors import (
    NoSpaceError,
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
    TargetIOError,
    UnsupportedError,
    UsageError,
)
from ..export import ExportOptions, Feed, Sink, make_writer
from ..export.feed import UNIT
from ..filesystems.imsm import check_table
from ..image.reader import ImageReader
from ..limits import threads_within
from ..partitions import read_partitions
from ..progress import JobControl, ProgressCallback, ProgressEvent, no_progress
from ..storage import is_remote
from ..storage.destcheck import refuse_new_in_dev
from .files import volume_pieces
from .manifest import choose_disk, is_set_dir, load_manifest, open_image_or_set
from .volumes import named_volume

# Export ids are uuid5 names in this namespace: the same image bytes exported again get the same id.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "imaging-utility:export-id")
READER_CACHE = 16 << 20  # units read whole chunks; the cache only bridges a chunk shared by two units


@dataclass
class ExportSource:
    """The bytes to export (``source``), the image they come from, and who they are (``identity``)."""

    source: BlockSource
    reader: ImageReader
    identity: dict[str, Any]
    bad_ranges: list[tuple[int, int]]  # unreadable ranges of the image inside the window, window-relative

    def close(self) -> None:
        self.reader.close()


@dataclass
class ExportResult:
    out: str
    format: str
    source_size: int
    virtual_size: int
    file_size: int
    allocated_bytes: int  # on the host's disk (holes excluded)
    nonzero_bytes: int  # non-zero source data written
    read_bytes: int  # bytes read from the image (zero and unallocated ranges are never read)
    elapsed: float
    details: dict[str, Any]
    identity: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out, "format": self.format, "source_size": self.source_size,
            "virtual_size": self.virtual_size, "file_size": self.file_size,
            "allocated_bytes": self.allocated_bytes, "nonzero_bytes": self.nonzero_bytes,
            "read_bytes": self.read_bytes, "seconds": round(self.elapsed, 3), "details": self.details,
            "identity": self.identity, "notes": self.notes,
            "bad_ranges": [{"offset": o, "length": n} for o, n in self.bad_ranges],
        }


def _window(reader: ImageReader, partition: int | None, offset: int | None, length: int | None,
            volume: str | None = None) -> tuple[BlockSource, dict[str, Any]]:
    if partition is not None and (offset is not None or length is not None):
        raise UsageError("--partition cannot be combined with --offset/--length")
    if volume is not None and (partition is not None or offset is not None or length is not None):
        raise UsageError("--volume cannot be combined with --partition or --offset/--length")
    if volume is not None:
        source = named_volume(reader, volume)
        try:
            start: int | None = volume_pieces(reader, source)[0][1] if source.size else 0
        except UnsupportedError:  # finely striped: no one place in the image
            start = None
        return source, {"partition": None, "volume": volume, "offset": start, "length": source.size}
    if partition is not None:
        part = read_partitions(reader).get(partition)
        check_table(reader, part.end)  # a firmware RAID member: its table is the array's
        return (WindowSource(reader, part.offset, part.length),
                {"partition": partition, "offset": part.offset, "length": part.length, "type": part.type,
                 "partition_uuid": part.uuid})
    if offset is not None or length is not None:
        start = offset or 0
        size = length if length is not None else reader.size - start
        if start < 0 or size < 0 or start + size > reader.size:
            raise UsageError(f"--offset {start} --length {size} is outside the image ({reader.size} bytes)")
        return WindowSource(reader, start, size), {"partition": None, "offset": start, "length": size}
    return reader, {"partition": None, "offset": 0, "length": reader.size}


def open_export_source(path: str, *, disk: str | None = None, partition: int | None = None,
                       offset: int | None = None, length: int | None = None,
                       volume: str | None = None) -> ExportSource:
    """Open IMAGE (a file, a split set's ``.001`` or base name, an ``s3://`` image, or one disk of a
    backup set directory, ``disk`` naming it when the set holds several) and select what to export: all of
    it, a partition, a window, or a volume by the name ``serve-proxy`` gives it (``ops.volumes``)."""
    reader = open_image_or_set(path, disk, readahead=0, cache_bytes=READER_CACHE)
    try:
        source, window = _window(reader, partition, offset, length, volume)
        identity = _identity(reader, source, window)
        if is_set_dir(path):
            identity["backup_set"] = {"dir": os.path.abspath(path),
                                      "disk": choose_disk(load_manifest(path), disk, path)["name"]}
        pieces = volume_pieces(reader, source) if reader.bad_ranges else []  # raises if they cannot be traced
        bad = [(v + max(o, at) - at, min(o + n, at + k) - max(o, at))
               for v, at, k in pieces for o, n in reader.bad_ranges if o < at + k and o + n > at]
        return ExportSource(source, reader, identity, sorted(bad))
    except BaseException:
        reader.close()
        raise


def _identity(reader: ImageReader, source: BlockSource, window: dict[str, Any]) -> dict[str, Any]:
    digests = dict((reader.trailer.meta if reader.trailer else {}).get("digests", {}))
    name = next(iter(sorted(digests)), None)
    key = f"{name}:{digests[name]}:{window['offset']}:{window['length']}" if name else None
    if key and window.get("volume"):
        key += f":{window['volume']}"
    table = read_partitions(source) if source.size >= 512 else None
    return {
        "id": str(uuid.uuid5(ID_NAMESPACE, key) if key else uuid.uuid4()),
        "image": [p if is_remote(p) else os.path.abspath(p) for p in reader.paths],
        "image_digests": digests,
        "image_created": reader.header.meta.get("created"),
        "used_only": reader.allocation is not None,
        "source": reader.header.meta.get("source", {}),
        "window": window,
        "partition_table": {"scheme": table.scheme, "disk_id": table.disk_id} if table and table.scheme else None,
        "exported_by": f"imaging-utility {__version__}",
    }


@contextlib.contextmanager
def _partial(out: str, force: bool, image_paths: list[str]) -> Iterator[tuple[int, str]]:
    """``OUT.partial``, created and locked; removed unless the caller renamed it."""
    if is_remote(out):
        raise UsageError(f"export writes a local file, not {out}: export to a file, then upload it")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UsageError(f"{out} is a directory; give the file to write, e.g. {os.path.join(out, 'disk.vhdx')}")
    if not os.path.isdir(parent):
        raise NotFoundError(f"cannot create {out}: directory {parent} does not exist")
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(out)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedError(f"{out} exists and is not a regular file; export writes files "
                               "(use restore to write a device)")
        if any(os.path.samefile(out, p) for p in image_paths if not is_remote(p) and os.path.exists(p)):
            raise RefusedError(f"{out} is the image being exported; choose another output name")
        if not force:
            raise RefusedError(f"{out} already exists; use --force to overwrite it")
    refuse_new_in_dev(out)
    partial = out + ".partial"
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RefusedError(f"{partial} is a symbolic link; remove it first") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDeniedError(f"cannot create {partial}: {e.strerror}") from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(f"no space to create {partial}: {e.strerror}") from None
        raise TargetIOError(f"cannot create {partial}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RefusedError(f"{partial} is being written by another export") from None
        os.ftruncate(fd, 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    done = False
    try:
        yield fd, partial
        done = True
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        os.close(fd)


def export(src: ExportSource, out: str, fmt: str, *, block_size: int | None = None,
           logical_sector: int | None = None, azure: bool = False, compress: bool = False,
           threads: int | None = None, force: bool = False,
           progress: ProgressCallback = no_progress, control: JobControl | None = None) -> ExportResult:
    """Write ``src`` to ``out`` as ``fmt`` (see ``export.FORMATS``); options are checked before anything
    is created.  Raises the project's errors (``UsageError`` for a bad option or a size over the format's
    limit, ``RefusedError`` for an existing ``out`` without ``force``, ``NoSpaceError`` when the disk fills).
    ``control`` pauses between units (no new reads, nothing written) or cancels (``Interrupted``; the
    partial file is removed)."""
    started = time.monotonic()
    source = src.source
    opts = ExportOptions(fmt, block_size=block_size, logical_sector=logical_sector, azure=azure,
                         compress=compress, file_name=os.path.basename(out),
                         disk_id=uuid.UUID(src.identity["id"]), identity=src.identity)
    writer = make_writer(source.size, source.sector_size, opts)
    if threads is not None and not 1 <= threads <= 256:
        raise UsageError(f"--threads {threads}: use 1 to 256")
    ev = ProgressEvent("export", 0, source.size)
    with _partial(out, force, src.reader.paths) as (fd, partial):
        sink = Sink(fd, partial)

        def on_progress(done: int) -> None:
            ev.done = done
            ev.output_bytes = sink.written
            ev.read_bytes = feed.stats.read_bytes
            progress(ev)
            if control is not None and control.stop_requested:
                control.checkpoint(ev, progress, f"export cancelled at byte {done} of {source.size}; {out} was "
                                   "not written")

        # each thread holds a unit and decodes a chunk of the image: both count against the memory budget
        workers = threads_within(threads or os.cpu_count() or 2, src.reader.chunk_size + UNIT)
        feed = Feed(source, writer.granule, threads=workers, transform=writer.transform, on_progress=on_progress)
        with interrupts.deferred():  # taken between units of the feed (interrupts.py)
            writer.write(sink, feed)
        sink.sync()
        try:
            st = os.fstat(fd)
            os.rename(partial, out)
        except OSError as e:
            raise TargetIOError(f"cannot rename {partial} to {out}: {e.strerror}") from None
        _sync_dir(os.path.dirname(os.path.abspath(out)))
    return ExportResult(
        out=out, format=writer.name, source_size=source.size, virtual_size=writer.virtual_size,
        file_size=st.st_size, allocated_bytes=st.st_blocks * 512, nonzero_bytes=feed.stats.nonzero_bytes,
        read_bytes=feed.stats.read_bytes, elapsed=time.monotonic() - started, details=writer.describe(),
        identity=src.identity, notes=list(writer.notes), bad_ranges=list(src.bad_ranges),
    )


def _sync_dir(path: str) -> None:
    """Make the rename durable; some filesystems cannot fsync a directory (the file itself is durable)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export_image(path: str, out: str, fmt: str, *, disk: str | None = None, partition: int | None = None,
                 offset: int | None = None, length: int | None = None, volume: str | None = None,
                 **kwargs: Any) -> ExportResult:
    """Open ``path`` and export it (or one partition, window or volume of it): one call for front ends."""
    src = open_export_source(path, disk=disk, partition=partition, offset=offset, length=length, volume=volume)
    try:
        return export(src, out, fmt, **kwargs)
    finally:
        src.close()
