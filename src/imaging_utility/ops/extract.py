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

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import Error, target_error
from ..filesystems.tree import Entry, FileTree
from ..progress import ProgressCallback, ProgressEvent, Throttled
from . import destdir
from .destdir import DestFailure, Notes, Restore, keeping, sanitize_name
from .extract_batch import BatchWriter, DestDir, ExtractReport, FileJob, LinkJob, Origin

__all__ = ["ExtractOptions", "ExtractReport", "extract"]

BATCH = 20_000  # files queued before a sorted batch is written
MAX_OPEN_DIRS = 512  # finished directories kept open for their queued files before a batch is forced


@dataclass
class ExtractOptions:
    """``owner``/``xattrs`` ``None``: restored when running as root."""

    streams: bool = False
    owner: bool | None = None
    xattrs: bool | None = None
    overwrite: bool = False
    keep_files: tuple[str, ...] = ()  # never replaced by --overwrite, by any name: the image's own files
    users: dict[int, int] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)


class _Extractor(BatchWriter):
    """The walk: creates directories, links and special files as it meets them and queues files."""

    def __init__(self, tree: FileTree, root: DestDir, report: ExtractReport, opts: ExtractOptions, restore: Restore,
                 progress: ProgressCallback | None, total: int) -> None:
        super().__init__()
        self.tree, self.root, self.report, self.opts, self.restore = tree, root, report, opts, restore
        self.overwrite = opts.overwrite
        self.notes = Notes()
        self.progress = Throttled(progress) if progress else None
        self.event = ProgressEvent("extract", 0, total)
        self.origins: dict[int, Origin] = {}  # inode -> first name, for entries with several links

    def _name(self, path: str, name: str, parent: DestDir) -> str:
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

    def entry(self, entry: Entry, parent: DestDir, ancestors: frozenset[int]) -> None:
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

    def _hard_link(self, entry: Entry, parent: DestDir, name: str) -> tuple[bool, Origin | None]:
        """(True, its origin) when this name was queued as a hard link to an earlier name of the same inode;
        else (False, the origin to record for an inode with several names, or ``None``)."""
        if not entry.nlink or entry.nlink < 2 or entry.inode is None:
            return False, None
        origin = self.origins.get(entry.inode)
        if origin is None:
            origin = self.origins[entry.inode] = Origin(parent.parts, name)
            return False, origin
        self.links.append(LinkJob(parent, name, entry, origin))
        parent.pending += 1
        return True, origin

    def directory(self, entry: Entry, parent: DestDir, name: str, ancestors: frozenset[int]) -> None:
        if entry.inode is not None and entry.inode in ancestors:
            self._fail(entry.path, "directory loops back to a parent directory; not followed")
            return
        try:
            fd, created = destdir.open_dir(parent.fd, name, self.opts.overwrite, entry.path)
        except DestFailure as e:
            self._fail(entry.path, str(e))
            return
        d = DestDir(fd, entry, (*parent.parts, name), created, self._xattrs(entry) if created else [])
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

    def node(self, entry: Entry, parent: DestDir, name: str, origin: Origin | None) -> None:
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

    def queue(self, entry: Entry, parent: DestDir, name: str, stream: str | None, origin: Origin | None) -> None:
        label = entry.path + (f":{stream}" if stream else "")
        try:
            layout = self.tree.layout(entry.path, stream)
        except Error as e:
            self._fail(label, str(e))
            return
        key = next((d for _f, d, _n in layout.runs or [] if d is not None), -1)
        xattrs = self._xattrs(entry) if stream is None else []
        self.jobs.append(FileJob(key, len(self.jobs), parent, name, entry, stream, layout, xattrs, origin))
        parent.pending += 1
        if len(self.jobs) >= BATCH:
            self.flush()

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
    from ..storage.destcheck import refuse_new_in_dev

    refuse_new_in_dev(dest)
    try:
        os.makedirs(dest, exist_ok=True)
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise target_error(e, f"use {dest} as the destination directory") from None


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
    root = DestDir(dest_fd, None, (), False, [])
    ex = _Extractor(tree, root, report, opts, restore, progress, total)
    try:
        with keeping(opts.keep_files):
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
