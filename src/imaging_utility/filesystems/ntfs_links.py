"""NTFS links and special files as Linux sees them: reparse-point symlinks and junctions, and the
Interix files ntfs-3g writes for ``ln -s``, ``mkfifo`` and ``mknod``.

Reparse points (MS-FSCC 2.1.2): ``IO_REPARSE_TAG_SYMLINK`` (flag 1 = relative target) and
``IO_REPARSE_TAG_MOUNT_POINT`` (junction, always absolute: ``\\??\\C:\\dir``) become symlinks, as does
WSL's ``IO_REPARSE_TAG_LX_SYMLINK`` (a version word, then the UTF-8 target).  A relative target gets
``/`` for ``\\``.  An absolute one names a drive letter this volume does not know; like ntfs-3g, the
target is looked up in this volume and, when found, the link points there relatively (ntfs-3g points
through its mount point instead); otherwise the Windows path is kept as the link's text (a dangling
link that shows where it pointed).

Interix files (ntfs-3g ``src/ntfs-3g.c`` ``ntfs_fuse_getattr``): a non-directory with the SYSTEM
attribute whose unnamed data is empty (FIFO) or one byte long (socket) when it is not HIDDEN, or begins
with ``IntxLNK\\1`` (symlink, UTF-16LE target), ``IntxCHR\\0`` or ``IntxBLK\\0`` (device, then u64
major and minor; exactly 24 bytes).

WSL (Windows Subsystem for Linux, version 1, and ntfs-3g with ``special_files=wsl``): a FIFO, socket or
device is a reparse point of tag ``IO_REPARSE_TAG_LX_FIFO``/``AF_UNIX``/``LX_CHR``/``LX_BLK`` with no data,
and any file may carry its POSIX fields as extended attributes ($EA, a chain of
FILE_FULL_EA_INFORMATION entries, MS-FSCC 2.4.15: next-entry offset, flags, name length, value length,
the name and a NUL, the value): ``$LXUID``, ``$LXGID``, ``$LXMOD`` (u32 each) and ``$LXDEV`` (u32 major,
u32 minor).
"""

from __future__ import annotations

import os
import posixpath
import re
import struct
from collections.abc import Callable

FILE_ATTRIBUTE_HIDDEN = 0x0002
FILE_ATTRIBUTE_SYSTEM = 0x0004
TAG_MOUNT_POINT = 0xA0000003
TAG_SYMLINK = 0xA000000C
TAG_LX_SYMLINK = 0xA000001D
LX_SPECIAL = {0x80000023: "socket", 0x80000024: "fifo", 0x80000025: "char", 0x80000026: "block"}
EA_MAX = 65536  # the most a file's extended attributes may take (MS-FSCC: the EA set is at most 64 KiB)
_EA_ENTRY = struct.Struct("<IBBH")
# Reparse points whose file keeps its data, wherever it has it, in its own unnamed stream: cloud files
# (IO_REPARSE_TAG_CLOUD..CLOUD_F, 0x9000n01A: OneDrive and other Cloud Files API clients; a part not
# downloaded is a sparse hole), the old OneDrive tag, Windows Projected File System, Azure File Sync.
TAG_CLOUD_MASK, TAG_CLOUD = 0xFFFF0FFF, 0x9000001A
TAGS_DATA_IN_PLACE = (0x80000021, 0x9000001C, 0x8000001E)
INTX_SYMLINK = b"IntxLNK\x01"
INTX_CHAR = b"IntxCHR\x00"
INTX_BLOCK = b"IntxBLK\x00"
INTX_DEVICE = struct.Struct("<8sQQ")
INTX_MAGIC_SIZE = 8
INTX_MAX = INTX_MAGIC_SIZE + 2 * 4096  # the largest Interix file ntfs-3g reads (PATH_MAX UTF-16 units)
_DRIVE = re.compile(r"^(?:\\\?\?\\)?[A-Za-z]:\\")


def lx_fields(ea: bytes) -> dict[str, int]:
    """WSL's POSIX fields in an $EA value: ``uid``, ``gid``, ``mode`` (type and permission bits) and
    ``rdev``, those present; a damaged chain ends the walk (what came before it is kept)."""
    out: dict[str, int] = {}
    pos = 0
    for _ in range(EA_MAX // _EA_ENTRY.size):
        if pos + _EA_ENTRY.size > len(ea):
            break
        step, _flags, name_len, value_len = _EA_ENTRY.unpack_from(ea, pos)
        name_at = pos + _EA_ENTRY.size
        value_at = name_at + name_len + 1
        if value_at + value_len > len(ea):
            break
        name, value = ea[name_at : name_at + name_len], ea[value_at : value_at + value_len]
        key = {b"$LXUID": "uid", b"$LXGID": "gid", b"$LXMOD": "mode"}.get(name)
        if key is not None and value_len >= 4:
            out[key] = struct.unpack_from("<I", value)[0]
        elif name == b"$LXDEV" and value_len >= 8:
            major, minor = struct.unpack_from("<II", value)
            out["rdev"] = os.makedev(major, minor)
        if step < _EA_ENTRY.size:
            break
        pos += step
    return out


def data_in_place(tag: int) -> bool:
    """Whether a reparse point of ``tag`` leaves the file's data in its unnamed stream (where present)."""
    return tag & TAG_CLOUD_MASK == TAG_CLOUD or tag in TAGS_DATA_IN_PLACE


def interix_kind(attributes: int, size: int) -> str | None:
    """What an Interix file of ``size`` bytes is without reading it, ``"read"`` when its bytes decide,
    or ``None`` for a plain file."""
    if not attributes & FILE_ATTRIBUTE_SYSTEM:
        return None
    if not attributes & FILE_ATTRIBUTE_HIDDEN and size in (0, 1):
        return "fifo" if size == 0 else "socket"
    if INTX_MAGIC_SIZE < size <= INTX_MAX:
        return "read"
    return None


def interix(data: bytes) -> tuple[str, str | None, int | None] | None:
    """(type, symlink target, device number) of an Interix file's bytes, or ``None`` for a plain file."""
    magic = data[:INTX_MAGIC_SIZE]
    if magic == INTX_SYMLINK:
        return "symlink", data[INTX_MAGIC_SIZE:].decode("utf-16-le", "replace").rstrip("\0"), None
    if magic in (INTX_CHAR, INTX_BLOCK) and len(data) == INTX_DEVICE.size:
        _m, major, minor = INTX_DEVICE.unpack(data)
        if major < 1 << 32 and minor < 1 << 32:
            return ("char" if magic == INTX_CHAR else "block"), None, os.makedev(major, minor)
    return None


def reparse_target(tag: int, substitute: str | None, relative: bool, buffer: bytes) -> str | None:
    """The symlink target of a link reparse point (relative ones with ``/``; absolute ones as stored, to be
    resolved by ``link_target``), or ``None`` when the reparse point is no link."""
    if tag == TAG_LX_SYMLINK and len(buffer) > 4:
        return buffer[4:].decode("utf-8", "surrogateescape")
    if tag not in (TAG_SYMLINK, TAG_MOUNT_POINT) or not substitute:
        return None
    if tag == TAG_SYMLINK and relative:
        return substitute.replace("\\", "/")
    return substitute


def link_target(link_path: str, target: str, find: Callable[[list[str]], str | None]) -> str:
    """The Linux target of a link at ``link_path`` whose stored target is ``target``: an absolute Windows
    path found in this volume becomes relative to the link's directory; other absolute Windows paths are
    kept as their text without the ``\\??\\`` prefix."""
    if not _DRIVE.match(target):
        return target.removeprefix("\\??\\") if target.startswith("\\??\\") else target
    text = target.removeprefix("\\??\\")
    parts = [p for p in text[3:].split("\\") if p and p != "."]
    found = find(parts) if ".." not in parts else None
    if found is None:
        return text
    return posixpath.relpath(found, posixpath.dirname(link_path))
