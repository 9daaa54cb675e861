"""Writing to Linux block devices: zero-out, discard, and making the kernel see a new partition table.

ioctls from ``include/uapi/linux/fs.h`` (``BLKZEROOUT``, ``BLKDISCARD``, ``BLKRRPART``) and
``include/uapi/linux/blkpg.h`` (``BLKPG`` with ``struct blkpg_ioctl_arg`` / ``struct blkpg_partition``).

``BLKRRPART`` asks the kernel to parse the table again.  A kernel built without the MBR/GPT parsers (as
on this project's CI machine) then knows no partitions at all, and loop devices without the partscan
flag refuse the ioctl; so after it the partitions the kernel lists (sysfs) are compared with the table
just written and fixed one by one with ``BLKPG`` (delete, add), which works in both cases — the same
route ``partx`` takes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import struct

from ..errors import TargetIOError

BLKRRPART = 0x125F
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKPG = 0x1269
BLKPG_ADD_PARTITION = 1
BLKPG_DEL_PARTITION = 2
c_range = struct.Struct("=QQ")  # start, length: the argument of BLKDISCARD / BLKZEROOUT
SYSFS_UNIT = 512  # sysfs start/size are in 512-byte units whatever the sector size
SYS_CLASS_BLOCK = "/sys/class/block"


class _BlkpgPartition(ctypes.Structure):
    _fields_ = [("start", ctypes.c_longlong), ("length", ctypes.c_longlong), ("pno", ctypes.c_int),
                ("devname", ctypes.c_char * 64), ("volname", ctypes.c_char * 64)]


class _BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int), ("flags", ctypes.c_int), ("datalen", ctypes.c_int),
                ("data", ctypes.c_void_p)]


def zero_out(fd: int, offset: int, length: int) -> bool:
    """Make ``[offset, offset+length)`` read back as zeros without sending the bytes (``BLKZEROOUT``);
    False when the device cannot (then write zeros)."""
    try:
        fcntl.ioctl(fd, BLKZEROOUT, c_range.pack(offset, length))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY, errno.EIO):
            return False
        raise
    return True


def discard(fd: int, offset: int, length: int) -> bool:
    """Tell the device ``[offset, offset+length)`` is unused (``BLKDISCARD``); False when unsupported."""
    try:
        fcntl.ioctl(fd, BLKDISCARD, c_range.pack(offset, length))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
            return False
        raise
    return True


def kernel_name(path: str) -> str:
    """``loop3`` for ``/dev/loop3`` (through sysfs, so a symlink or another node name works too)."""
    rdev = os.stat(path).st_rdev
    return os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))


def kernel_partitions(name: str) -> dict[int, tuple[int, int]]:
    """``{number: (start byte, length)}`` of the partitions the kernel knows on disk ``name``."""
    out: dict[int, tuple[int, int]] = {}
    for part in glob.glob(os.path.join(SYS_CLASS_BLOCK, name, "*", "partition")):
        sysdir = os.path.dirname(part)
        try:
            with open(part) as f:
                number = int(f.read())
            with open(os.path.join(sysdir, "start")) as f:
                start = int(f.read()) * SYSFS_UNIT
            with open(os.path.join(sysdir, "size")) as f:
                size = int(f.read()) * SYSFS_UNIT
        except (OSError, ValueError):
            continue
        out[number] = (start, size)
    return out


def holders(name: str) -> list[str]:
    """Devices built on disk ``name`` or on one of its partitions (device-mapper, md, bcache ...)."""
    found = glob.glob(os.path.join(SYS_CLASS_BLOCK, name, "holders", "*"))
    found += glob.glob(os.path.join(SYS_CLASS_BLOCK, name, "*", "holders", "*"))
    return sorted(os.path.basename(h) for h in found)


def _blkpg(fd: int, op: int, number: int, start: int = 0, length: int = 0) -> None:
    part = _BlkpgPartition(start, length, number, b"", b"")
    arg = _BlkpgIoctlArg(op, 0, ctypes.sizeof(part), ctypes.addressof(part))
    fcntl.ioctl(fd, BLKPG, bytes(arg))


def update_kernel_partitions(fd: int, path: str, wanted: dict[int, tuple[int, int]]) -> None:
    """Make the kernel's partitions of the disk open as ``fd`` exactly ``wanted`` (``{number: (start,
    length)}`` in bytes): ``BLKRRPART`` first, then ``BLKPG`` for whatever it left different.

    Raises:
        TargetIOError: the kernel still lists other partitions (one of them is busy, say).
    """
    name = kernel_name(path)
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError:
        pass  # EINVAL (no partscan), EBUSY: BLKPG below does it partition by partition
    current = kernel_partitions(name)
    for number, span in sorted(current.items()):
        if wanted.get(number) != span:
            try:
                _blkpg(fd, BLKPG_DEL_PARTITION, number)
            except OSError as e:
                raise TargetIOError(f"cannot remove the kernel's old partition {number} of {path}: "
                                    f"{e.strerror}; the new table is written, run 'partx -u {path}' or "
                                    "reboot") from None
    current = kernel_partitions(name)
    for number, (start, length) in sorted(wanted.items()):
        if current.get(number) != (start, length):
            try:
                _blkpg(fd, BLKPG_ADD_PARTITION, number, start, length)
            except OSError as e:
                raise TargetIOError(f"cannot tell the kernel about partition {number} of {path}: {e.strerror}; "
                                    f"the new table is written, run 'partx -a {path}' or reboot") from None


def parent_disk(path: str) -> tuple[str, int] | None:
    """(``/dev/NAME`` of the whole disk, the partition's first byte) when ``path`` is a partition's block
    device (sysfs ``partition`` and ``start``); None for anything else or when sysfs does not say."""
    try:
        rdev = os.stat(path).st_rdev
        if not rdev:
            return None
        sysdir = os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
        if not os.path.exists(os.path.join(sysdir, "partition")):
            return None
        with open(os.path.join(sysdir, "start")) as f:
            start = int(f.read()) * SYSFS_UNIT
    except (OSError, ValueError):
        return None
    disk = f"/dev/{os.path.basename(os.path.dirname(sysdir))}"
    return (disk, start) if os.path.exists(disk) else None
