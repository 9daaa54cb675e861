"""``extract``: copy files and directory trees out of a filesystem into DEST as Linux files.

What is restored: file data (sparse files stay sparse), directories, symlinks (created with their
target as stored, never followed), hard links (as hard links), FIFOs and sockets, device nodes (as
root; noted and skipped otherwise), permission bits, owner and group (as root, numeric ids, optionally
mapped), extended attributes and POSIX ACLs (by default as root), access and modification times.
NTFS alternate data streams are written as ``NAME:STREAM`` files with ``streams``.  Nothing is ever
written outside DEST or into an entry already in DEST (``destdir.py`` says how).

Files are written in the order their data lies in the volume, not in directory order: the tree is
walked (directories, links and special files created) and files queued in batches of up to ``BATCH``,
each batch sorted by the disk offset of its first data run, so the image's chunks are read front to
back and each decoded about once (a name-ordered walk decoded the 1 GiB benchmark tree's chunks 7 times
over).  A directory's descriptor stays open until its queued files and links are done; then it gets
its owner, mode, attributes and times.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .._io import pwrite_all
from ..errors import CorruptImageError, Error, NoSpaceError, TargetIOError
from ..filesystems.tree import Entry, FileStream, FileTree, Layout
from ..progress import ProgressCallback, ProgressEvent, Throttled
from . import destdir
from .destdir import DestFailure, Names, Notes, Restore, sanitize_name

__all__ = ["ExtractOptions", "ExtractReport", "extract"]

BLOCK = 1 << 20
BATCH = 20_000  # files queued before a sorted batch is written
MAX_OPEN_DIRS = 512  # finished directories kept open for their queued files before a batch is forced
WRITERS = 3  # threads writing a batch: creating and writing files is mostly kernel time, without the GIL
SPECIAL = ("fifo", "socket", "char", "block")


@dataclass
class ExtractOptions:
    """``owner``/``xattrs`` ``None``: restored when running as root."""

    streams: bool = False
    owner: bool | None = None
    xattrs: bool | None = None
    overwrite: bool = False
    users: dict[int, int] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)


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


class _Dir:
    """A directory in DEST: its descriptor, kept open while files and links queued for it are pending."""

    __slots__ = ("created", "entry", "fd", "names", "parts", "pending", "walked", "xattrs")

    def __init__(self, fd: int, entry: Entry | None, parts: tuple[str, ...], created: bool,
                 xattrs: list[tuple[str, bytes]]) -> None:
        self.fd, self.entry, self.parts, self.created, self.xattrs = fd, entry, parts, created, xattrs
        self.names = Names(fd)
        self.pending, self.walked = 0, False


class _Origin:
    """Where the first name of a hard-linked inode was written, and whether it was made."""

    __slots__ = ("made", "name", "parts")

    def __init__(self, parts: tuple[str, ...], name: str) -> None:
        self.parts, self.name, self.made = parts, name, False


class _Job(NamedTuple):
    key: int  # disk offset of the first data run (-1: no runs, e.g. resident data)
    seq: int
    parent: _Dir
    name: str
    entry: Entry
    stream: str | None
    layout: Layout
    xattrs: list[tuple[str, bytes]]
    origin: _Origin | None


class _Link(NamedTuple):
    parent: _Dir
    name: str
    entry: Entry
    origin: _Origin


class _Extractor:
    def __init__(self, tree: FileTree, root: _Dir, report: ExtractReport, opts: ExtractOptions, restore: Restore,
                 progress: ProgressCallback | None, total: int) -> None:
        self.tree, self.root, self.report, self.opts, self.restore = tree, root, report, opts, restore
        self.notes = Notes()
        self.progress = Throttled(progress) if progress else None
        self.event = ProgressEvent("extract", 0, total)
        self.jobs: list[_Job] = []
        self.links: list[_Link] = []
        self.origins: dict[int, _Origin] = {}  # inode -> first name, for entries with several links
        self.dirs: list[_Dir] = []  # open directories, in creation order
        self.lock = threading.Lock()  # guards the report, the progress event and _Dir.pending in a batch

    def _fail(self, path: str, why: str) -> None:
        with self.lock:
            self.report.failed.append((path, why))

    def _name(self, path: str, name: str, parent: _Dir) -> str:
        safe = sanitize_name(name)
        written = parent.names.claim(safe, lambda n: sanitize_name(f"{safe}~{n}"))
        if written != name:
            self.report.renamed.append((path, written))
        return written

    def _xattrs(self, entry: Entry) -> list[tuple[str, bytes]]:
        if not self.restore.xattrs:
            return []
        try:
            return self.tree.xattrs(entry.path)
        except Error as e:
            self._fail(entry.path, f"extended attributes not restored: {e}")
            return []

    def entry(self, entry: Entry, parent: _Dir, ancestors: frozenset[int]) -> None:
        if entry.type == "damaged":
            self._fail(entry.path, entry.error or "damaged")
            return
        if entry.type in ("reparse", "other"):
            self.report.skipped.append({"path": entry.path, "type": entry.type, "target": entry.target or "",
                                        "why": "not a file, directory, link or special file Linux has"})
            return
        if entry.type in ("char", "block") and os.geteuid() != 0:
            self.report.skipped.append({"path": entry.path, "type": entry.type, "target": "",
                                        "why": "device nodes are made only as root"})
            return
        name = self._name(entry.path, entry.name, parent)
        if entry.type == "dir":
            self.directory(entry, parent, name, ancestors)
            return
        linked, origin = self._hard_link(entry, parent, name)
        if not linked:
            if entry.type == "file":
                self.queue(entry, parent, name, None, origin)
            else:
                self.node(entry, parent, name, origin)
        if self.opts.streams and entry.type == "file":
            for s in entry.streams:
                sname = self._name(f"{entry.path}:{s}", f"{entry.name}:{s}", parent)
                self.queue(entry, parent, sname, s, None)

    def _hard_link(self, entry: Entry, parent: _Dir, name: str) -> tuple[bool, _Origin | None]:
        """(True, its origin) when this name was queued as a hard link to an earlier name of the same inode;
        else (False, the origin to record for an inode with several names, or ``None``)."""
        if not entry.nlink or entry.nlink < 2 or entry.inode is None:
            return False, None
        origin = self.origins.get(entry.inode)
        if origin is None:
            origin = self.origins[entry.inode] = _Origin(parent.parts, name)
            return False, origin
        self.links.append(_Link(parent, name, entry, origin))
        parent.pending += 1
        return True, origin

    def directory(self, entry: Entry, parent: _Dir, name: str, ancestors: frozenset[int]) -> None:
        if entry.inode is not None and entry.inode in ancestors:
            self._fail(entry.path, "directory loops back to a parent directory; not followed")
            return
        try:
            fd, created = destdir.open_dir(parent.fd, name, self.opts.overwrite, entry.path)
        except DestFailure as e:
            self._fail(entry.path, str(e))
            return
        d = _Dir(fd, entry, (*parent.parts, name), created, self._xattrs(entry) if created else [])
        self.dirs.append(d)
        try:
            children = self.tree.list(entry.path)
        except Error as e:
            self._fail(entry.path, str(e))
            children = []
        else:
            self.report.dirs += 1
        inner = ancestors | {entry.inode} if entry.inode is not None else ancestors
        for child in children:
            self.entry(child, d, inner)
        d.walked = True
        if len(self.dirs) > MAX_OPEN_DIRS:
            self.flush()

    def node(self, entry: Entry, parent: _Dir, name: str, origin: _Origin | None) -> None:
        """A symlink or special file, made at once."""
        try:
            destdir.make_node(parent.fd, name, entry, self.opts.overwrite, entry.path)
            if origin is not None:
                origin.made = True
            destdir.apply(self.restore, self.notes, entry, self._xattrs(entry), dir_fd=parent.fd, name=name)
        except DestFailure as e:
            self._fail(entry.path, str(e))
            return
        except Error:
            raise
        except OSError as e:
            self._fail(entry.path, f"its metadata could not be set: {e.strerror}")
        if entry.type == "symlink":
            self.report.symlinks += 1
        else:
            self.report.special += 1

    def queue(self, entry: Entry, parent: _Dir, name: str, stream: str | None, origin: _Origin | None) -> None:
        label = entry.path + (f":{stream}" if stream else "")
        try:
            layout = self.tree.layout(entry.path, stream)
        except Error as e:
            self._fail(label, str(e))
            return
        key = next((d for _f, d, _n in layout.runs or [] if d is not None), -1)
        xattrs = self._xattrs(entry) if stream is None else []
        self.jobs.append(_Job(key, len(self.jobs), parent, name, entry, stream, layout, xattrs, origin))
        parent.pending += 1
        if len(self.jobs) >= BATCH:
            self.flush()

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
        keep: list[_Dir] = []
        for d in self.dirs:
            if d.walked and not d.pending:
                self._finish(d)
            else:
                keep.append(d)
        self.dirs = keep

    def hard_link(self, link: _Link) -> None:
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
            destdir.make_link(src, link.origin.name, link.parent.fd, link.name, self.opts.overwrite, path)
            self.report.hardlinks += 1
        except DestFailure as e:
            self._fail(path, str(e))
        finally:
            os.close(src)

    def _finish(self, d: _Dir) -> None:
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

    def file(self, job: _Job, buf: memoryview) -> None:
        label = job.entry.path + (f":{job.stream}" if job.stream else "")
        try:
            fd = destdir.create_file(job.parent.fd, job.name, self.opts.overwrite, label)
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

    def _copy(self, label: str, job: _Job, fd: int, view: memoryview) -> bool:
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


def _open_dest(dest: str) -> int:
    from ..errors import PermissionDeniedError

    try:
        os.makedirs(dest, exist_ok=True)
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        msg = f"cannot use {dest} as the destination directory: {e.strerror}"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionDeniedError(msg) from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(msg) from None
        raise TargetIOError(msg) from None


def extract(tree: FileTree, paths: list[str], dest: str, options: ExtractOptions | None = None, *,
            progress: ProgressCallback | None = None) -> ExtractReport:
    """Copy ``paths`` (files or whole directories) from ``tree`` into directory ``dest`` (created if missing).

    Each path lands in DEST under its own name (``/a/b`` → ``DEST/b``), ``/`` as DEST itself.  Raises
    ``NotFoundError`` for a path that does not exist, ``PermissionDeniedError`` when DEST cannot be
    written, ``NoSpaceError`` when DEST fills up; everything else that goes wrong with one entry is in
    ``ExtractReport.failed``.
    """
    opts = options or ExtractOptions()
    root_user = os.geteuid() == 0
    restore = Restore(owner=root_user if opts.owner is None else opts.owner,
                      xattrs=root_user if opts.xattrs is None else opts.xattrs, users=opts.users, groups=opts.groups)
    norm = [tree.normalize(p) for p in paths]
    tops = [tree.stat(p) for p in norm]  # every path must exist before anything is written
    dest_fd = _open_dest(dest)
    report = ExtractReport()
    total = _sizes(tree, norm, opts.streams) if progress else 0
    root = _Dir(dest_fd, None, (), False, [])
    ex = _Extractor(tree, root, report, opts, restore, progress, total)
    try:
        for top in tops:
            if top.path == "/":
                for child in tree.list("/"):
                    ex.entry(child, root, frozenset({top.inode} if top.inode is not None else ()))
            else:
                ex.entry(top, root, frozenset())
        ex.flush()
    finally:
        ex.close()
        os.close(dest_fd)
        if ex.progress:
            ex.progress.flush()
    report.notes = ex.notes.lines()
    return report
