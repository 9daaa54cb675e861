"""Is a device (or anything built on it) mounted or in use?  Safety checks for imaging and restore.

A device counts as used when any of these is mounted (or active as swap):
the device itself, its partitions (``/sys/class/block/NAME/*/partition``), the
devices holding it (``holders/``: device-mapper, md, bcache, recursively), and
loop devices whose backing file is it (or, for a regular file, the loop devices
backed by that file).  Mounts are matched in ``/proc/self/mountinfo`` by
``major:minor``, plus the mount source's device number for filesystems such as
btrfs that report an anonymous ``0:N``; never by comparing name strings.

Read-only means the *superblock* is read-only: a read-only bind of a read-write
filesystem still writes to the device.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from dataclasses import dataclass

from ..errors import RefusedError
from .source import open_error

SYS_DEV_BLOCK = "/sys/dev/block"
SYS_CLASS_BLOCK = "/sys/class/block"
MOUNTINFO = "/proc/self/mountinfo"
SWAPS = "/proc/swaps"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    device: str  # kernel name of the mounted device, e.g. "sdb1"
    relation: str  # how it relates to the path asked about, e.g. "partition sdb1"
    mount_point: str  # "[swap]" for active swap
    fstype: str
    read_only: bool

    def describe(self) -> str:
        if self.fstype == "swap":
            return f"{self.relation} is active swap"
        mode = "read-only" if self.read_only else "read-write"
        return f"{self.relation} is mounted {mode} at {self.mount_point} ({self.fstype})"


@dataclass(frozen=True, slots=True)
class MountState:
    path: str
    mounts: tuple[Mount, ...]

    @property
    def mounted(self) -> bool:
        return bool(self.mounts)

    @property
    def read_write(self) -> bool:
        """Some related device is mounted read-write (or is active swap)."""
        return any(not m.read_only for m in self.mounts)

    @property
    def read_only(self) -> bool:
        """Mounted, and only read-only."""
        return self.mounted and not self.read_write


def _unescape(field: str) -> str:
    """mountinfo and /proc/swaps escape space, tab, newline and backslash as ``\\ooo`` octal."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def _devno_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _sysfs_devno(sysdir: str) -> int | None:
    try:
        with open(os.path.join(sysdir, "dev")) as f:
            major, _, minor = f.read().strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _loops_backed_by(st: os.stat_result) -> list[str]:
    """sysfs dirs of loop devices whose backing file is the file (or block device) ``st``."""
    found = []
    for backing in sorted(glob.glob(os.path.join(SYS_CLASS_BLOCK, "loop*", "loop", "backing_file"))):
        try:
            with open(backing) as f:
                target = f.read().rstrip("\n").removesuffix(" (deleted)")
            bst = os.stat(target)
        except OSError:
            continue
        same_file = stat.S_ISREG(st.st_mode) and (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino)
        same_dev = stat.S_ISBLK(st.st_mode) and stat.S_ISBLK(bst.st_mode) and bst.st_rdev == st.st_rdev
        if same_file or same_dev:
            found.append(os.path.dirname(os.path.dirname(backing)))
    return found


def related_devices(path: str) -> dict[int, tuple[str, str]]:
    """``devno -> (kernel name, relation)`` for ``path`` and everything built on it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise open_error(path, e, what="device") from None
    out: dict[int, tuple[str, str]] = {}
    todo: list[tuple[str, str]] = []  # (sysfs dir, relation)
    if stat.S_ISBLK(st.st_mode):
        todo.append((os.path.realpath(os.path.join(SYS_DEV_BLOCK, f"{os.major(st.st_rdev)}:"
                                                                   f"{os.minor(st.st_rdev)}")), ""))
    todo += [(d, f"loop device {os.path.basename(d)} backed by {path}") for d in _loops_backed_by(st)]
    while todo:
        sysdir, relation = todo.pop()
        devno = _sysfs_devno(sysdir)
        name = os.path.basename(sysdir)
        if devno is None or devno in out:
            continue
        out[devno] = (name, relation or path)
        for part in sorted(glob.glob(os.path.join(sysdir, "*", "partition"))):
            pdir = os.path.dirname(part)
            todo.append((pdir, f"partition {os.path.basename(pdir)} of {name}"))
        for holder in sorted(glob.glob(os.path.join(sysdir, "holders", "*"))):
            hname = os.path.basename(holder)
            todo.append((os.path.join(SYS_CLASS_BLOCK, hname), f"{hname} (built on {name})"))
        if relation:  # loops backed by `path` itself were queued above; these are for the rest
            dev_stat = _stat_dev(name)
            if dev_stat is not None:
                todo += [(d, f"loop device {os.path.basename(d)} backed by {name}")
                         for d in _loops_backed_by(dev_stat)]
    return out


def _stat_dev(name: str) -> os.stat_result | None:
    try:
        return os.stat(os.path.join("/dev", name))
    except OSError:
        return None


def mount_state(path: str) -> MountState:
    """Which of ``path``'s related devices are mounted or used as swap, and how."""
    related = related_devices(path)
    mounts: list[Mount] = []
    with open(MOUNTINFO) as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            major, _, minor = fields[2].partition(":")
            devnos = {os.makedev(int(major), int(minor))}
            source = _unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""
            if source.startswith("/"):
                src_devno = _devno_of(source)
                if src_devno is not None:
                    devnos.add(src_devno)
            hits = [related[d] for d in devnos if d in related]
            if hits:
                name, relation = hits[0]
                super_opts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
                mounts.append(Mount(name, relation, _unescape(fields[4]), fields[sep + 1],
                                    "ro" in super_opts))
    try:
        with open(SWAPS) as f:
            for line in list(f)[1:]:
                devno = _devno_of(_unescape(line.split()[0])) if line.strip() else None
                if devno is not None and devno in related:
                    name, relation = related[devno]
                    mounts.append(Mount(name, relation, "[swap]", "swap", False))
    except OSError:
        pass
    return MountState(path, tuple(mounts))


def check_source_mounts(path: str, allow_mounted: bool) -> list[str]:
    """Warnings about mounts of the source ``path``; refuse a read-write mount.

    Raises:
        RefusedError: something on ``path`` is mounted read-write and ``allow_mounted`` is false.
    """
    state = mount_state(path)
    rw = [m for m in state.mounts if not m.read_only]
    if rw and not allow_mounted:
        raise RefusedError(
            f"source {path} is in use: {rw[0].describe()}; unmount it or remount it read-only, "
            "or pass --allow-mounted to image it anyway (the image may be inconsistent)"
        )
    return [
        f"source {path}: {m.describe()}; "
        + ("imaging it is safe" if m.read_only else "imaging anyway as asked: the image may be inconsistent")
        for m in state.mounts
    ]


def check_target_safe(path: str) -> None:
    """Refuse to restore onto ``path`` when it, a partition of it or a device built on it is
    mounted or busy.  A path that does not exist yet is safe (a new file).

    Raises:
        RefusedError: with the mount point or the busy device in the message.
    """
    if not os.path.lexists(path):
        return
    state = mount_state(path)
    if state.mounted:
        m = state.mounts[0]
        raise RefusedError(f"restore target {path} is in use: {m.describe()}; unmount it first")
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        loops = _loops_backed_by(st)
        if loops:
            name = os.path.basename(loops[0])
            raise RefusedError(f"restore target {path} is attached to /dev/{name}; "
                               f"detach it first (losetup -d /dev/{name})")
        return
    for devno, (name, _relation) in related_devices(path).items():
        node = path if devno == st.st_rdev else os.path.join("/dev", name)
        try:
            fd = os.open(node, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise RefusedError(
                    f"restore target {path} is busy: {node} is held by another program "
                    "(a mount in another namespace, RAID, LVM or device-mapper); release it first"
                ) from None
            continue  # a missing /dev node for a holder cannot be checked this way
        os.close(fd)
