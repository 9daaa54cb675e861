"""Writing one batch of queued files into DEST: in the order of their data on the volume, by ``WRITERS``
threads; then the batch's hard links, then the directories that wait for nothing more get their
metadata.  ``BatchWriter`` is the writing half of the extractor in ``extract.py`` (which walks the tree
and queues); see there for what is restored and why files go in disk order.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import interrupts
from .._io import pwrite_all
from ..errors import CorruptImageError, Error, NoSpaceError, TargetIOError
from ..filesystems.tree import Entry, FileStream, FileTree, Layout
from ..progress import ProgressEvent, Throttled
from . import destdir
from .destdir import DestFailure, Names, Notes, Restore


@dataclass
class ExtractReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special: int = 0  # FIFOs, sockets, device nodes
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path in image, why)
    skipped: list[dict[str, str]] = field(default_factory=list)  # not created: path, type, target, why
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (path in image, name written)
    notes: list[tuple[str, int, str]] = field(default_factory=list)  # metadata not set: reason, count, first

    @property
    def ok(self) -> bool:
        return not self.failed


BLOCK = 1 << 20
WRITERS = 3  # threads writing a batch: creating and writing files is mostly kernel time, without the GIL


class DestDir:
    """A directory in DEST: its descriptor, kept open while files and links queued for it are pending."""

    __slots__ = ("created", "entry", "fd", "names", "parts", "pending", "walked", "xattrs")

    def __init__(self, fd: int, entry: Entry | None, parts: tuple[str, ...], created: bool,
                 xattrs: list[tuple[str, bytes]]) -> None:
        self.fd, self.entry, self.parts, self.created, self.xattrs = fd, entry, parts, created, xattrs
        self.names = Names(fd)
        self.pending, self.walked = 0, False


class Origin:
    """Where the first name of a hard-linked inode was written, and whether it was made."""

    __slots__ = ("made", "name", "parts")

    def __init__(self, parts: tuple[str, ...], name: str) -> None:
        self.parts, self.name, self.made = parts, name, False


class FileJob(NamedTuple):
    key: int  # disk offset of the first data run (-1: no runs, e.g. resident data)
    seq: int
    parent: DestDir
    name: str
    entry: Entry
    stream: str | None
    layout: Layout
    xattrs: list[tuple[str, bytes]]
    origin: Origin | None


class LinkJob(NamedTuple):
    parent: DestDir
    name: str
    entry: Entry
    origin: Origin


class BatchWriter:
    """Queued files, hard links and open directories of one extraction, and how they are written.

    Thread-safety: ``flush`` runs the writer threads and returns when they are done; ``lock`` guards the
    report, the progress event and ``DestDir.pending`` meanwhile."""

    tree: FileTree
    root: DestDir
    report: ExtractReport
    restore: Restore
    overwrite: bool
    notes: Notes
    progress: Throttled | None
    event: ProgressEvent

    def __init__(self) -> None:
        self.jobs: list[FileJob] = []
        self.links: list[LinkJob] = []
        self.dirs: list[DestDir] = []  # open directories, in creation order
        self.lock = threading.Lock()

    def _fail(self, path: str, why: str) -> None:
        with self.lock:
            self.report.failed.append((path, why))

    def flush(self) -> None:
        """Write the queued files in disk order, make the queued hard links, then finish the directories
        that wait for nothing.

        ``WRITERS`` threads take the sorted jobs in turn, so reads stay in disk order.  The first
        ``NoSpaceError`` (or other exception) stops all writers and is raised here."""
        jobs, self.jobs = iter(sorted(self.jobs, key=lambda j: (j.key, j.seq))), []
        failure: list[BaseException] = []

        def writer() -> None:
            buf = memoryview(bytearray(BLOCK))
            while not failure:
                with self.lock:
                    job = next(jobs, None)
                if job is None:
                    return
                try:
                    interrupts.check()  # on the main thread; flush() defers signals (interrupts.py)
                    self.file(job, buf)
                except BaseException as e:
                    failure.append(e)
                    return
                finally:
                    with self.lock:
                        job.parent.pending -= 1

        threads = [threading.Thread(target=writer, name="extract-writer") for _ in range(WRITERS - 1)]
        for t in threads:
            t.start()
        try:
            with interrupts.deferred():
                writer()
        finally:
            for t in threads:
                t.join()
        if failure:
            raise failure[0]
        links, self.links = self.links, []
        for link in links:
            self.hard_link(link)
            link.parent.pending -= 1
        keep: list[DestDir] = []
        for d in self.dirs:
            if d.walked and not d.pending:
                self._finish(d)
            else:
                keep.append(d)
        self.dirs = keep

    def hard_link(self, link: LinkJob) -> None:
        path = link.entry.path
        if not link.origin.made:
            self._fail(path, f"hard link not made: its first name ({'/'.join((*link.origin.parts, link.origin.name))}"
                             " in DEST) could not be extracted")
            return
        try:
            src = destdir.open_parts(self.root.fd, link.origin.parts)
        except OSError as e:
            self._fail(path, f"hard link not made: {e.strerror}")
            return
        try:
            destdir.make_link(src, link.origin.name, link.parent.fd, link.name, self.overwrite, path)
            self.report.hardlinks += 1
        except DestFailure as e:
            self._fail(path, str(e))
        finally:
            os.close(src)

    def _finish(self, d: DestDir) -> None:
        try:
            if d.created and d.entry is not None:
                destdir.apply(self.restore, self.notes, d.entry, d.xattrs, fd=d.fd)
        finally:
            os.close(d.fd)

    def close(self) -> None:
        """Close every directory still open (after an error)."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                os.close(d.fd)
        self.dirs = []

    def file(self, job: FileJob, buf: memoryview) -> None:
        label = job.entry.path + (f":{job.stream}" if job.stream else "")
        try:
            fd = destdir.create_file(job.parent.fd, job.name, self.overwrite, label)
        except DestFailure as e:
            self._fail(label, str(e))
            return
        if job.origin is not None:
            job.origin.made = True
        try:
            if self._copy(label, job, fd, buf):
                meta = job.entry if job.stream is None else Entry(job.name, label, "file", mtime_ns=job.entry.mtime_ns,
                                                                  atime_ns=job.entry.atime_ns)
                destdir.apply(self.restore, self.notes, meta, job.xattrs, fd=fd)
        except Error:
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"no space left writing {label} into the destination") from None
            self._fail(label, f"its metadata could not be set: {e.strerror}")
        finally:
            os.close(fd)

    def _copy(self, label: str, job: FileJob, fd: int, view: memoryview) -> bool:
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
            with self.lock:
                self.report.files += 1
                self.report.bytes += src.size
            return True
        except Error as e:
            if isinstance(e, NoSpaceError):
                raise
            self._fail(label, f"{e} (partial file kept)")
            return False

    def _write(self, fd: int, pos: int, data: memoryview, label: str) -> None:
        try:
            pwrite_all(fd, data, pos)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"no space left writing {label} into the destination") from None
            raise TargetIOError(f"writing {label} into the destination failed: {e.strerror}") from None
