"""Files inside images: open a tree (image → partition → filesystem), extract safely, map bad sectors.

``extract`` never writes outside DEST, whatever the names in the image: every component is
sanitized (NUL and control characters, ``/``, ``.``/``..``, names over 255 bytes), files and
directories are created relative to directory file descriptors with ``O_NOFOLLOW``/``O_EXCL``, so a
symlink already in DEST cannot redirect a write, and symlinks or reparse points in the image are
recorded in the report, never created.  A file that cannot be read is reported and the rest goes on.

Files are written in the order their data lies in the volume, not in directory order: the tree is
walked (directories created) and files queued in batches of up to ``BATCH`` files, each batch sorted by
the disk offset of its first data run, so the image's chunks are read front to back and each decoded
about once (a name-ordered walk decoded the 1 GiB benchmark tree's chunks 7 times over).  A directory's
descriptor stays open until its queued files are written, then it gets its modification time.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .._io import pwrite_all
from ..blocks import BlockSource, WindowSource
from ..errors import CorruptImageError, Error, NoSpaceError, NotFoundError, TargetIOError, UsageError
from ..filesystems import detect
from ..filesystems.tree import Entry, FileStream, FileTree, Layout, open_tree
from ..format import c_image
from ..progress import ProgressCallback, ProgressEvent, Throttled

__all__ = ["ExtractReport", "damaged_files", "extract", "open_image_tree", "sanitize_name", "volume_bad_ranges"]

BLOCK = 1 << 20
NAME_MAX = 255
BATCH = 20_000  # files queued before a sorted batch is written
MAX_OPEN_DIRS = 512  # finished directories kept open for their queued files before a batch is forced
WRITERS = 3  # threads writing a batch: creating and writing files is mostly kernel time, without the GIL


def _open_source(path: str) -> BlockSource:
    from ..devices.source import FileSource
    from ..image.reader import open_image

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return open_image(path)  # a split set named without its .001 suffix, or a clear not-found error
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image, volume or device") from None
    except PermissionError:
        raise UsageError(f"permission denied reading {path} (devices need root)") from None
    if len(head) == 4 and int.from_bytes(head, "little") == c_image.HEADER_MAGIC:
        return open_image(path)
    return FileSource(path)


def open_image_tree(path: str, *, partition: int | None = None, offset: int | None = None,
                    length: int | None = None, lv: str | None = None,
                    subvolume: str | None = None) -> tuple[FileTree, BlockSource]:
    """The file tree in an image, a raw volume file or a device (and in one of its partitions or a window,
    and in logical volume ``lv`` of an LVM2 physical volume there; Btrfs: in ``subvolume``).

    Returns the tree and the opened top-level source (an ``ImageReader`` or ``FileSource``); close the
    source when done.  Raises ``UsageError`` when a whole partitioned disk is given without ``partition``.
    """
    from ..partitions import partition_source, read_partitions

    if partition is not None and (offset is not None or length is not None):
        raise UsageError("--partition cannot be combined with --offset/--length")
    source = _open_source(path)
    try:
        volume: BlockSource = source
        if partition is not None:
            volume = partition_source(source, partition)
        elif offset is not None or length is not None:
            start = offset or 0
            size = length if length is not None else source.size - start
            if start < 0 or size <= 0 or start + size > source.size:
                raise UsageError(f"--offset {start} --length {size} is outside {path} ({source.size} bytes)")
            volume = WindowSource(source, start, size)
        elif detect(source) is None:
            parts = read_partitions(source).partitions
            if parts:
                listing = ", ".join(f"{p.number} ({p.type})" for p in parts)
                raise UsageError(f"{path} holds a partitioned disk, not one filesystem: choose a partition "
                                 f"with --partition N (partitions: {listing})")
        if lv is not None:
            from ..filesystems.lvm_source import open_lv

            volume = open_lv(volume, lv)
        return open_tree(volume, subvolume), source
    except BaseException:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        raise


def volume_bad_ranges(source: BlockSource, tree: FileTree) -> list[tuple[int, int]]:
    """The source's unreadable ranges (``ImageReader.bad_ranges``) relative to the tree's volume."""
    bad: list[tuple[int, int]] = list(getattr(source, "bad_ranges", None) or [])
    base = tree.source.offset if isinstance(tree.source, WindowSource) else 0
    end = base + tree.source.size
    out = []
    for off, n in sorted(bad):
        s, e = max(off, base), min(off + n, end)
        if s < e:
            out.append((s - base, e - s))
    return out


def damaged_files(tree: FileTree, bad_ranges: list[tuple[int, int]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """Files (``path`` or ``path:stream``) whose data touches ``bad_ranges`` (volume-relative
    ``(offset, length)``), with the lost ``(file_offset, length)`` ranges of each."""
    bad = sorted((o, o + n) for o, n in bad_ranges if n > 0)
    if not bad:
        return []
    starts = [s for s, _ in bad]
    out: list[tuple[str, list[tuple[int, int]]]] = []
    for entry in tree.walk("/"):
        if entry.type not in ("file", "symlink", "reparse"):
            continue
        for stream in (None, *entry.streams):
            try:
                runs = tree.data_runs(entry.path, stream)
            except (CorruptImageError, NotFoundError):
                continue
            lost: list[tuple[int, int]] = []
            for foff, disk, n in runs:
                i = max(0, bisect.bisect_right(starts, disk) - 1)
                while i < len(bad) and bad[i][0] < disk + n:
                    s, e = max(bad[i][0], disk), min(bad[i][1], disk + n)
                    if s < e:
                        lost.append((foff + s - disk, e - s))
                    i += 1
            if lost:
                out.append((entry.path + (f":{stream}" if stream else ""), _merge(lost)))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= o:
            po, pn = out[-1]
            out[-1] = (po, max(pn, o + n - po))
        else:
            out.append((o, n))
    return out


def sanitize_name(name: str) -> str:
    """A safe single path component for ``name`` on a POSIX filesystem (same name when already safe)."""
    clean = "".join("_" if (ord(c) < 0x20 or ord(c) == 0x7F or c in "/\\") else c for c in name)
    if clean in ("", ".", ".."):
        clean = "_" + clean
    raw = os.fsencode(clean)
    if len(raw) > NAME_MAX:
        digest = hashlib.sha256(raw).hexdigest()[:12]
        # cut on a character boundary; undecodable bytes go too, the digest keeps names distinct
        clean = f"{raw[: NAME_MAX - 13].decode('utf-8', 'ignore')}~{digest}"
    return clean


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path in image, why)
    links: list[dict[str, str]] = field(default_factory=list)  # symlinks / reparse points, not created
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (path in image, name written)

    @property
    def ok(self) -> bool:
        return not self.failed


class _Dir:
    """A directory created in DEST: its descriptor, kept open while files queued for it are pending."""

    __slots__ = ("fd", "mtime_ns", "pending", "walked")

    def __init__(self, fd: int, mtime_ns: int | None) -> None:
        self.fd, self.mtime_ns, self.pending, self.walked = fd, mtime_ns, 0, False


class _Job(NamedTuple):
    key: int  # disk offset of the first data run (-1: no runs, e.g. resident data)
    seq: int
    parent: _Dir | None  # None: DEST itself
    name: str
    entry: Entry
    stream: str | None
    layout: Layout


class _Extractor:
    def __init__(self, tree: FileTree, dest_fd: int, report: ExtractReport, streams: bool,
                 progress: ProgressCallback | None, total: int) -> None:
        self.tree, self.dest_fd, self.report, self.streams = tree, dest_fd, report, streams
        self.progress = Throttled(progress) if progress else None
        self.total = total
        self.event = ProgressEvent("extract", 0, total)
        self.jobs: list[_Job] = []
        self.dirs: list[_Dir] = []  # open directories, in creation order
        self.lock = threading.Lock()  # guards the report, the progress event and _Dir.pending in a batch

    def _name(self, path: str, name: str, used: set[str]) -> str:
        safe = sanitize_name(name)
        base, n = safe, 1
        while safe.casefold() in used:
            n += 1
            safe = sanitize_name(f"{base}~{n}")
        used.add(safe.casefold())
        if safe != name:
            self.report.renamed.append((path, safe))
        return safe

    def entry(self, entry: Entry, parent: _Dir | None, used: set[str], ancestors: frozenset[int]) -> None:
        if entry.type == "damaged":
            self.report.failed.append((entry.path, entry.error or "damaged"))
            return
        if entry.type in ("symlink", "reparse", "other"):
            self.report.links.append({"path": entry.path, "type": entry.type, "target": entry.target or ""})
            return
        name = self._name(entry.path, entry.name, used)
        if entry.type == "dir":
            self.directory(entry, parent, name, ancestors)
            return
        self.queue(entry, parent, name, None)
        if self.streams:
            for s in entry.streams:
                sname = self._name(f"{entry.path}:{s}", f"{entry.name}:{s}", used)
                self.queue(entry, parent, sname, s)

    def fd_of(self, parent: _Dir | None) -> int:
        return self.dest_fd if parent is None else parent.fd

    def directory(self, entry: Entry, parent: _Dir | None, name: str, ancestors: frozenset[int]) -> None:
        if entry.inode is not None and entry.inode in ancestors:
            self.report.failed.append((entry.path, "directory loops back to a parent directory; not followed"))
            return
        parent_fd = self.fd_of(parent)
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as e:
            self._dest_error(entry.path, e)
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        except OSError as e:
            err = e
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    err = OSError(errno.ELOOP, "symlink")
            self._dest_error(entry.path, err)
            return
        d = _Dir(fd, entry.mtime_ns)
        self.dirs.append(d)
        try:
            children = self.tree.list(entry.path)
        except Error as e:
            self.report.failed.append((entry.path, str(e)))
            children = []
        else:
            self.report.dirs += 1
        used: set[str] = set()
        inner = ancestors | {entry.inode} if entry.inode is not None else ancestors
        for child in children:
            self.entry(child, d, used, inner)
        d.walked = True
        if len(self.dirs) > MAX_OPEN_DIRS:
            self.flush()

    def queue(self, entry: Entry, parent: _Dir | None, name: str, stream: str | None) -> None:
        label = entry.path + (f":{stream}" if stream else "")
        try:
            layout = self.tree.layout(entry.path, stream)
        except Error as e:
            self.report.failed.append((label, str(e)))
            return
        key = next((d for _f, d, _n in layout.runs or [] if d is not None), -1)
        self.jobs.append(_Job(key, len(self.jobs), parent, name, entry, stream, layout))
        if parent is not None:
            parent.pending += 1
        if len(self.jobs) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the queued files in disk order, then finish the directories that wait for nothing.

        ``WRITERS`` threads take the sorted jobs in turn, so reads stay in disk order.  The first
        ``NoSpaceError`` (or other exception) stops all writers and is raised here."""
        jobs, self.jobs = iter(sorted(self.jobs)), []
        failure: list[BaseException] = []

        def writer() -> None:
            buf = memoryview(bytearray(BLOCK))
            while not failure:
                with self.lock:
                    job = next(jobs, None)
                if job is None:
                    return
                try:
                    self.file(job, buf)
                except BaseException as e:
                    failure.append(e)
                    return
                finally:
                    if job.parent is not None:
                        with self.lock:
                            job.parent.pending -= 1

        threads = [threading.Thread(target=writer, name="extract-writer") for _ in range(WRITERS - 1)]
        for t in threads:
            t.start()
        try:
            writer()
        finally:
            for t in threads:
                t.join()
        if failure:
            raise failure[0]
        keep: list[_Dir] = []
        for d in self.dirs:
            if d.walked and not d.pending:
                self._finish(d)
            else:
                keep.append(d)
        self.dirs = keep

    def _finish(self, d: _Dir) -> None:
        try:
            if d.mtime_ns is not None:
                os.utime(d.fd, ns=(d.mtime_ns, d.mtime_ns))
        finally:
            os.close(d.fd)

    def close(self) -> None:
        """Close every directory still open (after an error)."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                os.close(d.fd)
        self.dirs = []

    def file(self, job: _Job, buf: memoryview) -> None:
        label = job.entry.path + (f":{job.stream}" if job.stream else "")
        try:
            fd = os.open(job.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644,
                         dir_fd=self.fd_of(job.parent))
        except OSError as e:
            self._dest_error(label, e)
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.report.failed.append((label, f"{job.name} in DEST exists and is not a regular file; "
                                                  "not written"))
                return
            os.set_blocking(fd, True)
            self._copy(label, job, fd, buf)
        finally:
            os.close(fd)

    def _copy(self, label: str, job: _Job, fd: int, view: memoryview) -> None:
        try:
            src = FileStream(self.tree, job.layout, label)
            holes = src.holes()
            pos, h = 0, 0
            while pos < src.size:
                while h < len(holes) and holes[h][0] + holes[h][1] <= pos:
                    h += 1
                if h < len(holes) and holes[h][0] <= pos:
                    pos = holes[h][0] + holes[h][1]  # sparse: leave a hole in the output too
                    continue
                limit = holes[h][0] if h < len(holes) else src.size
                n = min(BLOCK, limit - pos, src.size - pos)
                src.seek(pos)
                got = src.readinto(view[:n])
                if got != n:
                    raise CorruptImageError(f"{label}: data ended at byte {pos + got} of {src.size}")
                self._write(fd, pos, view[:n], label)
                pos += n
                if self.progress:
                    with self.lock:
                        self.event.done += n
                        self.progress(self.event)
            os.ftruncate(fd, src.size)
            if job.entry.mtime_ns is not None:
                os.utime(fd, ns=(job.entry.mtime_ns, job.entry.mtime_ns))
            with self.lock:
                self.report.files += 1
                self.report.bytes += src.size
        except Error as e:
            if isinstance(e, NoSpaceError):
                raise
            with self.lock:
                self.report.failed.append((label, f"{e} (partial file kept)"))

    def _write(self, fd: int, pos: int, data: memoryview, label: str) -> None:
        try:
            pwrite_all(fd, data, pos)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpaceError(f"no space left writing {label} into the destination") from None
            raise TargetIOError(f"writing {label} into the destination failed: {e.strerror}") from None

    def _dest_error(self, path: str, e: OSError) -> None:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left creating {path} in the destination") from None
        why = "a symlink is in the way" if e.errno == errno.ELOOP else (e.strerror or str(e))
        self.report.failed.append((path, f"cannot create it in the destination: {why}"))


def _sizes(tree: FileTree, paths: list[str], streams: bool) -> int:
    total = 0
    for path in paths:
        top = tree.stat(path)
        entries: Iterator[Entry] = tree.walk(path) if top.type == "dir" else iter([top])
        for e in entries:
            if e.type == "file":
                total += e.size
                if streams:
                    total += sum(tree.layout(e.path, s).size for s in e.streams)
    return total


def extract(tree: FileTree, paths: list[str], dest: str, *, streams: bool = False,
            progress: ProgressCallback | None = None) -> ExtractReport:
    """Copy ``paths`` (files or whole directories) from ``tree`` into directory ``dest`` (created if missing).

    Each path lands in DEST under its own name (``/a/b`` → ``DEST/b``), ``/`` as DEST itself.  Raises
    ``NotFoundError`` for a path that does not exist, ``NoSpaceError`` when DEST fills up; everything
    else that goes wrong with one file is in ``ExtractReport.failed``.
    """
    norm = [tree.normalize(p) for p in paths]
    tops = [tree.stat(p) for p in norm]  # every path must exist before anything is written
    try:
        os.makedirs(dest, exist_ok=True)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise TargetIOError(f"cannot use {dest} as the destination directory: {e.strerror}") from None
    report = ExtractReport()
    total = _sizes(tree, norm, streams) if progress else 0
    ex = _Extractor(tree, dest_fd, report, streams, progress, total)
    used: set[str] = set()
    try:
        for top in tops:
            if top.path == "/":
                for child in tree.list("/"):
                    ex.entry(child, None, used, frozenset({top.inode} if top.inode is not None else ()))
            else:
                ex.entry(top, None, used, frozenset())
        ex.flush()
    finally:
        ex.close()
        os.close(dest_fd)
        if ex.progress:
            ex.progress.flush()
    return report
