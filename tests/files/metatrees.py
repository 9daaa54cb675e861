"""Volumes whose files carry everything Linux files have, written through a real mount, and a comparison of
two directory trees entry by entry (type, mode, owner, link target, xattrs, mtime, content, hard links).

``ext4_tree`` mounts a fresh ext4 volume with the kernel driver; ``ntfs_tree`` mounts a fresh NTFS volume
with ntfs-3g, whose ``ln -s``/``mkfifo``/``mknod`` write Interix files and whose
``system.ntfs_reparse_data`` attribute writes Windows symlinks and junctions as Windows does.
``copy_from_mount`` is the reference: ``cp -a`` from a read-only mount of the same volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import fsbuild

MiB = 1 << 20
OLD_MTIME = 1_500_000_000_987_654_321
OLD_ATIME = 1_600_000_000_123_456_789


def _sh(*cmd: str | os.PathLike[str]) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def kernel_mount(vol: Path, read_only: bool = False) -> Iterator[Path]:
    """``vol`` mounted by the kernel's own driver through a loop device (root)."""
    mnt = Path(tempfile.mkdtemp(prefix="metatree-"))
    try:
        _sh("mount", "-o", ("ro," if read_only else "") + "loop", vol, mnt)
        try:
            yield mnt
        finally:
            _sh("umount", mnt)
    finally:
        mnt.rmdir()


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
    finally:
        s.close()


def ext4_tree(vol: Path) -> None:
    """An ext4 volume holding modes 0755/0600/4755, two owners, relative and absolute symlinks, a hard-linked
    pair, a FIFO, a socket, device nodes, user.* and security.* xattrs and POSIX ACLs (access and default)."""
    fsbuild.random_image(vol, 32)
    _sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", vol)
    with kernel_mount(vol) as m:
        (m / "bin").mkdir(mode=0o755)
        (m / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
        os.chmod(m / "bin" / "tool", 0o4755)
        (m / "bin" / "plain").write_bytes(b"plain\n")
        os.chmod(m / "bin" / "plain", 0o755)
        home = m / "home" / "ann"
        home.mkdir(parents=True)
        (home / "secret.txt").write_bytes(b"only ann\n")
        os.chmod(home / "secret.txt", 0o600)
        os.chown(home / "secret.txt", 1000, 1000)
        os.chown(home, 1000, 1000)
        (home / "big.bin").write_bytes(os.urandom(3 * MiB + 17))
        os.chown(home / "big.bin", 1000, 100)
        (m / "srv").mkdir()
        os.chown(m / "srv", 2000, 2001)
        os.chmod(m / "srv", 0o2775)  # after chown, which clears set-gid
        (m / "srv" / "shared.txt").write_bytes(b"shared\n")
        os.chown(m / "srv" / "shared.txt", 2000, 2001)
        os.symlink("../home/ann/secret.txt", m / "srv" / "rel-link")
        os.symlink("/etc/passwd", m / "abs-link")
        os.symlink("no/such/target", m / "dangling")
        os.lchown(m / "abs-link", 1000, 1000)
        (m / "pair-a").write_bytes(b"hard linked\n")
        os.link(m / "pair-a", m / "srv" / "pair-b")
        os.mkfifo(m / "fifo", 0o640)
        _socket(m / "srv" / "sock")
        os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(m / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
        os.mknod(m / "bigdev", stat.S_IFCHR | 0o600, os.makedev(300, 70000))  # needs the new 12:20 encoding
        os.setxattr(home / "secret.txt", "user.comment", b"hello xattr")
        os.setxattr(home / "secret.txt", "security.label", b"top-secret")
        os.setxattr(m / "bin" / "tool", "user.big", os.urandom(700))  # in the attribute block: no room in the inode
        os.setxattr(m / "abs-link", "trusted.note", b"on a link", follow_symlinks=False)
        _sh("setfacl", "-m", "u:1234:rw,g:55:r", m / "srv" / "shared.txt")
        _sh("setfacl", "-d", "-m", "u:1234:rwx", m / "srv")
        os.utime(home / "secret.txt", ns=(OLD_ATIME, OLD_MTIME))
        os.utime(m / "abs-link", ns=(OLD_ATIME, OLD_MTIME), follow_symlinks=False)
        os.utime(home, ns=(OLD_ATIME, OLD_MTIME))


def linux_tree(vol: Path, kind: str) -> None:
    """A fresh XFS or Btrfs volume (320 MiB, sparse) written through the kernel: owners, a set-uid mode, a
    hard-linked pair, a symlink, a FIFO, device nodes, user.*, security.* and trusted.* xattrs and POSIX ACLs
    (access and default; XFS keeps them in its own format, converted back on the way out)."""
    with open(vol, "wb") as f:
        f.truncate(320 * MiB)
    _sh(f"mkfs.{kind}", "-f", "-q" if kind == "xfs" else "-f", vol)
    with kernel_mount(vol) as m:
        (m / "d").mkdir()
        os.chown(m / "d", 2000, 2001)
        (m / "d" / "f").write_bytes(b"data\n" * 1000)
        os.chown(m / "d" / "f", 1234, 567)
        os.chmod(m / "d" / "f", 0o4750)
        os.link(m / "d" / "f", m / "h")
        os.symlink("d/f", m / "l")
        os.mkfifo(m / "p", 0o640)
        os.mknod(m / "c", stat.S_IFCHR | 0o600, os.makedev(300, 70000))
        os.mknod(m / "b", stat.S_IFBLK | 0o660, os.makedev(7, 3))
        os.setxattr(m / "d" / "f", "user.comment", b"hello xattr")
        os.setxattr(m / "d" / "f", "security.label", b"top-secret")
        os.setxattr(m / "d", "user.mid", os.urandom(2500))  # XFS: out of the inode, into a leaf block
        os.setxattr(m / "l", "trusted.note", b"on a link", follow_symlinks=False)
        _sh("setfacl", "-m", "u:1234:rw,g:55:r", m / "d" / "f")
        _sh("setfacl", "-d", "-m", "u:1234:rwx", m / "d")
        os.utime(m / "d" / "f", ns=(OLD_ATIME, OLD_MTIME))


def _reparse(tag: int, body: bytes) -> bytes:
    return struct.pack("<IHH", tag, len(body), 0) + body


def _windows_symlink(target: str, relative: bool) -> bytes:
    t = target.encode("utf-16-le")
    return _reparse(0xA000000C, struct.pack("<HHHHI", 0, len(t), len(t), len(t), 1 if relative else 0) + t + t)


def _junction(target: str) -> bytes:
    sub, pr = ("\\??\\" + target).encode("utf-16-le"), target.encode("utf-16-le")
    return _reparse(0xA0000003, struct.pack("<HHHH", 0, len(sub), len(sub) + 2, len(pr)) + sub + b"\0\0" + pr + b"\0\0")


def ntfs_tree(vol: Path) -> None:
    """An NTFS volume written by ntfs-3g: files, a hard link, Interix symlinks (relative and absolute), a FIFO
    and device nodes, Windows symlinks (relative, absolute into the volume, to another drive) and junctions
    (into the volume and to a path it does not hold)."""
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "meta", vol)
    with fsbuild.mounted(vol, "ntfs") as m:
        (m / "Docs" / "Deep").mkdir(parents=True)
        (m / "Docs" / "report.txt").write_bytes(b"report\n" * 1000)
        (m / "Docs" / "Deep" / "note.txt").write_bytes(b"note\n")
        (m / "big.bin").write_bytes(os.urandom(2 * MiB + 5))
        os.link(m / "big.bin", m / "Docs" / "big-link.bin")
        os.symlink("Docs/report.txt", m / "intx-rel")
        os.symlink("/etc/hostname", m / "intx-abs")
        os.mkfifo(m / "fifo")
        os.mknod(m / "null", stat.S_IFCHR | 0o644, os.makedev(1, 3))
        links = {"win-rel": (_windows_symlink("Docs\\report.txt", True), False),
                 "win-abs": (_windows_symlink("\\??\\C:\\docs\\DEEP\\note.txt", False), False),
                 "win-other-drive": (_windows_symlink("\\??\\D:\\elsewhere\\x.txt", False), False),
                 "Docs/junction": (_junction("C:\\Docs\\Deep"), True),
                 "junction-out": (_junction("C:\\Windows\\Temp"), True)}
        for name, (data, is_dir) in links.items():
            if is_dir:
                (m / name).mkdir()
            else:
                (m / name).write_bytes(b"")
            os.setxattr(m / name, "system.ntfs_reparse_data", data)
        os.utime(m / "Docs" / "Deep" / "note.txt", ns=(OLD_ATIME, OLD_MTIME))


def copy_from_mount(vol: Path, kind: str, dest: Path) -> None:
    """The reference: ``cp -a`` of every entry of a read-only mount of ``vol`` into ``dest``."""
    dest.mkdir(parents=True)
    ctx = _ntfs_ro(vol) if kind == "ntfs" else kernel_mount(vol, read_only=True)
    with ctx as m:
        _sh("cp", "-a", "--no-preserve=context", f"{m}/.", dest)
        (dest / ".mnt").write_text(str(m))  # ntfs-3g writes absolute targets through its mount point


@contextlib.contextmanager
def _ntfs_ro(vol: Path) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="metatree-ntfs-"))
    try:
        # the modes extract gives NTFS entries (0644 files, 0755 directories); ADS not as xattrs
        _sh("ntfs-3g", "-o", "ro,fmask=0133,dmask=0022,streams_interface=none", vol, mnt)
        try:
            yield mnt
        finally:
            _sh("umount", mnt)
    finally:
        mnt.rmdir()


def ntfs3g_target(mnt: str, link_rel: str, target: str) -> str:
    """An ntfs-3g link target as extract writes it: ntfs-3g points absolute Windows targets through its mount
    point (``MNT/dir``, or ``MNT/.NTFS-3G/C:/path`` outside the volume); extract makes the first relative
    and keeps the second as the Windows path."""
    if target.startswith(mnt + "/.NTFS-3G/"):
        return target[len(mnt) + len("/.NTFS-3G/") :].replace("/", "\\")
    if target == mnt or target.startswith(mnt + "/"):
        return os.path.relpath("/" + target[len(mnt) :].lstrip("/"), os.path.dirname("/" + link_rel))
    return target


def describe(root: Path, skip: tuple[str, ...] = (".mnt",)) -> dict[str, dict[str, object]]:
    """Every entry under ``root`` (not following links): what ``compare`` checks."""
    out: dict[str, dict[str, object]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if rel in skip:
                continue
            st = p.lstat()
            info: dict[str, object] = {"type": stat.S_IFMT(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                                       "mtime_ns": st.st_mtime_ns}
            if not stat.S_ISLNK(st.st_mode):
                info["mode"] = oct(stat.S_IMODE(st.st_mode))
            info["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False)
                              for n in sorted(os.listxattr(p, follow_symlinks=False))}
            if stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    info["hardlink_of"] = inodes.setdefault(st.st_ino, rel)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = info
    return out


def compare(expected: Path, got: Path, fix_target: Callable[[str, str], str] | None = None) -> list[str]:
    """The differences between two trees, one line each (empty: equal in every checked field)."""
    want, have = describe(expected), describe(got)
    if fix_target is not None:
        for rel, info in want.items():
            if "target" in info:
                info["target"] = fix_target(rel, str(info["target"]))
    diffs = [f"missing: {p}" for p in sorted(set(want) - set(have))]
    diffs += [f"extra: {p}" for p in sorted(set(have) - set(want))]
    for path in sorted(set(want) & set(have)):
        for key in sorted(set(want[path]) | set(have[path])):
            a, b = want[path].get(key), have[path].get(key)
            if a != b:
                diffs.append(f"{path}: {key} {_short(a)} != {_short(b)}")
    return diffs


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + f"... ({len(text)} chars)"
