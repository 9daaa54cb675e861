"""Writing entries into DEST without ever following a link or writing into something already there.

Every operation is relative to a directory descriptor and never resolves a symlink: regular files are
created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (an existing file, link or FIFO is refused, or unlinked first
when replacing was asked for: never opened, never written through), directories are opened with
``O_NOFOLLOW``, symlinks are created with the target as stored and never looked through, and metadata
of links is set with the no-follow calls (``lchown``, ``utimensat(AT_SYMLINK_NOFOLLOW)``, ``lsetxattr``).
Special files (FIFOs, sockets, devices) are never opened for I/O: their metadata goes through an
``O_PATH|O_NOFOLLOW`` descriptor checked to be the node just made.

Metadata is applied in the one order that keeps it: owner (``chown`` clears set-uid bits and file
capabilities), then mode, then extended attributes (a POSIX ACL fixes the group bits of the mode), then
access and modification times last.  The change time cannot be set on Linux; it is the time of
extraction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import NoSpaceError
from ..filesystems.ext_meta import map_acl_ids
from ..filesystems.tree import TYPE_BITS, Entry
from ..storage.destcheck import file_key

NAME_MAX = 255
PROBE = ".imaging-utility-case-probe"
ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")
SETID = stat.S_ISUID | stat.S_ISGID


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


class DestFailure(Exception):
    """One entry could not be created in DEST; the message says why (the run goes on)."""


def dest_error(e: OSError, what: str) -> Exception:
    """``NoSpaceError`` (stops the run) or a ``DestFailure`` saying why ``what`` failed."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left creating {what} in the destination")
    why = "a symlink is in the way" if e.errno == errno.ELOOP else (e.strerror or str(e))
    return DestFailure(f"cannot create it in the destination: {why}")


def folds_case(dir_fd: int) -> bool:
    """Whether the filesystem of ``dir_fd`` treats names differing only in case (or Unicode normalization)
    as one name (vfat, exFAT, ext4 casefold directories ...): probed with a short-lived file."""
    probe = f"{PROBE}-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    except OSError:
        return False
    os.close(fd)
    try:
        os.stat(probe.upper(), dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe, dir_fd=dir_fd)


def fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


@dataclass
class Names:
    """The names written into one DEST directory; a name is renamed only when DEST would collide."""

    dir_fd: int
    exact: set[str] = field(default_factory=set)
    folded: set[str] = field(default_factory=set)
    folding: bool | None = None  # probed on the first name that would collide only if DEST folds case

    def claim(self, safe: str, variant: Callable[[int], str]) -> str:
        """``safe``, or the first ``variant(n)`` (n = 2, 3, ...) that collides with no name written so far."""
        name, n = safe, 1
        while self._taken(name):
            n += 1
            name = variant(n)
        self.exact.add(name)
        self.folded.add(fold(name))
        return name

    def _taken(self, name: str) -> bool:
        if name in self.exact:
            return True
        if fold(name) not in self.folded:
            return False
        if self.folding is None:
            self.folding = folds_case(self.dir_fd)
        return self.folding


_KEPT: set[tuple[int, int]] = set()  # (st_dev, st_ino) of files never replaced: see ``keeping``


@contextlib.contextmanager
def keeping(paths: Iterable[str]) -> Iterator[None]:
    """While the block runs, ``--overwrite`` never unlinks these files, whatever their name in DEST: the
    image being read (extracting into its own directory would otherwise replace it by a file of the same
    name from inside it)."""
    added = []
    for path in paths:
        key = file_key(path)  # None for an object-store URL: nothing in DEST can be it
        if key is not None and key not in _KEPT:
            _KEPT.add(key)
            added.append(key)
    try:
        yield
    finally:
        _KEPT.difference_update(added)


def _clear(dir_fd: int, name: str, overwrite: bool, what: str) -> None:
    """An entry named ``name`` is in the way: unlink it when replacing was asked for (never a directory,
    never a file ``keeping`` protects)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        raise dest_error(e, what) from None
    if (st.st_dev, st.st_ino) in _KEPT:
        raise DestFailure("the image being read has that name in the destination; not replaced")
    kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"
    if not overwrite or stat.S_ISDIR(st.st_mode):
        hint = "" if stat.S_ISDIR(st.st_mode) else " (add --overwrite to replace it)"
        raise DestFailure(f"{kind} of that name already exists in the destination; not replaced{hint}")
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as e:
        raise dest_error(e, what) from None


def create_file(dir_fd: int, name: str, overwrite: bool, what: str) -> int:
    """A new regular file open for writing; never an existing one (unlinked first only with ``overwrite``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(2):
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            if attempt:
                raise DestFailure("it appeared again in the destination while being replaced") from None
            _clear(dir_fd, name, overwrite, what)
        except OSError as e:
            raise dest_error(e, what) from None
    raise AssertionError("unreachable")


def open_dir(dir_fd: int, name: str, overwrite: bool, what: str) -> tuple[int, bool]:
    """(descriptor, created) of directory ``name``: made, or an existing real directory (never a link)."""
    created = True
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        created = False
    except OSError as e:
        raise dest_error(e, what) from None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd), created
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise dest_error(e, what) from None
    _clear(dir_fd, name, overwrite, what)  # a link or a file is in the way
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        return os.open(name, flags, dir_fd=dir_fd), True
    except OSError as e:
        raise dest_error(e, what) from None


def make_node(dir_fd: int, name: str, entry: Entry, overwrite: bool, what: str) -> None:
    """Create a symlink (target as stored), FIFO, socket or device node ``name``."""
    for attempt in range(2):
        try:
            if entry.type == "symlink":
                os.symlink(entry.target or "", name, dir_fd=dir_fd)
            else:
                os.mknod(name, TYPE_BITS[entry.type] | 0o600, entry.rdev or 0, dir_fd=dir_fd)
            return
        except FileExistsError:
            if attempt:
                raise DestFailure("it appeared again in the destination while being replaced") from None
            _clear(dir_fd, name, overwrite, what)
        except OSError as e:
            raise dest_error(e, what) from None


def make_link(src_fd: int, src_name: str, dir_fd: int, name: str, overwrite: bool, what: str) -> None:
    """Hard link ``name`` to ``src_name`` (in ``src_fd``), never following either."""
    for attempt in range(2):
        try:
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return
        except FileExistsError:
            if attempt:
                raise DestFailure("it appeared again in the destination while being replaced") from None
            _clear(dir_fd, name, overwrite, what)
        except OSError as e:
            raise dest_error(e, what) from None


def open_parts(dest_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of directory ``parts`` under DEST, every component opened with ``O_NOFOLLOW``."""
    fd = os.dup(dest_fd)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Restore:
    """What metadata to restore, decided once per run."""

    owner: bool  # chown to the stored ids (needs root)
    xattrs: bool
    users: dict[int, int] = field(default_factory=dict)  # --map-owner
    groups: dict[int, int] = field(default_factory=dict)  # --map-group

    def ids(self, entry: Entry) -> tuple[int, int] | None:
        if not self.owner or (entry.uid is None and entry.gid is None):
            return None
        uid = -1 if entry.uid is None else self.users.get(entry.uid, entry.uid)
        gid = -1 if entry.gid is None else self.groups.get(entry.gid, entry.gid)
        return uid, gid

    def perm(self, entry: Entry, chowned: bool) -> int:
        """The mode to set: set-uid/set-gid are dropped from non-directories whose owner was not restored."""
        perm = entry.perm
        if not chowned and entry.type != "dir":
            perm &= ~SETID
        return perm

    def xattr_value(self, name: str, value: bytes) -> bytes:
        if name in ACL_NAMES and (self.users or self.groups):
            return map_acl_ids(value, self.users, self.groups)
        return value


class Notes:
    """Metadata that could not be restored, counted by reason (thread-safe): one line per reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}  # reason -> the first path it concerned

    def add(self, reason: str, path: str) -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            self.first.setdefault(reason, path)

    def lines(self) -> list[tuple[str, int, str]]:
        """(reason, how many entries, first entry) for each reason."""
        with self._lock:
            return [(reason, n, self.first[reason]) for reason, n in self.counts.items()]


def _xattr_reason(name: str, e: OSError) -> str:
    if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return "extended attributes not set: the destination's filesystem does not support them"
    prefix = name.split(".", 1)[0] + ".*" if not name.startswith("system.") else name
    return f"extended attribute {prefix} not set: {e.strerror}"


def apply(restore: Restore, notes: Notes, entry: Entry, xattrs: list[tuple[str, bytes]], *, fd: int | None = None,
          dir_fd: int | None = None, name: str | None = None) -> None:
    """Owner, mode, xattrs, times of ``entry`` onto the open ``fd`` (file, directory) or, for symlinks and
    special nodes, onto ``name`` in ``dir_fd``.  What cannot be set is counted in ``notes``."""
    path = entry.path
    if fd is None:
        assert dir_fd is not None and name is not None
        if entry.type == "symlink":
            _apply_link(restore, notes, entry, xattrs, dir_fd, name)
            return
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_IFMT(os.fstat(node).st_mode) != TYPE_BITS[entry.type]:
                raise DestFailure("it was replaced in the destination while being made")
            _apply_fd(restore, notes, entry, xattrs, f"/proc/self/fd/{node}", path)
        finally:
            os.close(node)
        return
    _apply_fd(restore, notes, entry, xattrs, fd, path)


def _apply_fd(restore: Restore, notes: Notes, entry: Entry, xattrs: list[tuple[str, bytes]], target: int | str,
              path: str) -> None:
    ids = restore.ids(entry)
    chowned = False
    if ids is not None:
        try:
            os.chown(target, *ids)
            chowned = True
        except OSError as e:
            notes.add(f"owner not set: {e.strerror}", path)
    perm = restore.perm(entry, chowned)
    if perm != entry.perm:
        notes.add("set-uid/set-gid bits dropped: the owner was not restored", path)
    try:
        os.chmod(target, perm)
    except OSError as e:
        notes.add(f"mode not set: {e.strerror}", path)
    for xname, value in xattrs if restore.xattrs else ():
        try:
            os.setxattr(target, xname, restore.xattr_value(xname, value))
        except OSError as e:
            notes.add(_xattr_reason(xname, e), path)
    if entry.mtime_ns is not None:
        try:
            os.utime(target, ns=(entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns, entry.mtime_ns))
        except OSError as e:
            notes.add(f"times not set: {e.strerror}", path)


def _apply_link(restore: Restore, notes: Notes, entry: Entry, xattrs: list[tuple[str, bytes]], dir_fd: int,
                name: str) -> None:
    ids = restore.ids(entry)
    if ids is not None:
        try:
            os.chown(name, *ids, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            notes.add(f"owner not set: {e.strerror}", entry.path)
    for xname, value in xattrs if restore.xattrs else ():
        try:  # the directory through its descriptor, then the link itself, not followed
            os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", xname, restore.xattr_value(xname, value),
                        follow_symlinks=False)
        except OSError as e:
            notes.add(_xattr_reason(xname, e), entry.path)
    if entry.mtime_ns is not None:
        times = (entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns, entry.mtime_ns)
        try:
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            notes.add(f"times not set: {e.strerror}", entry.path)
