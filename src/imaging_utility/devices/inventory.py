"""The machine's block devices as the kernel lists them in sysfs, for a source or target picker.

Read from ``/sys/block/NAME`` (whole disks) and its ``NAME*/partition`` children:
size (``size`` is in 512-byte units whatever the sector size), read-only and
removable flags, model, vendor and serial (sysfs first, udev's database second,
as ``identity`` does), a loop device's backing file, and the transport as
``lsblk`` names it (from the device's place in the sysfs tree).  No device is
opened here: listing is safe and cheap.  RAM disks, zram and detached loop
devices (size 0) are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .identity import _read_int, _read_text, _vpd_serial, udev_properties

SYS_BLOCK = "/sys/block"
_SKIP_PREFIXES = ("ram", "zram")
#: Path components of a device's sysfs path → transport, most specific first.
_TRANSPORTS = (("usb", "usb"), ("nvme", "nvme"), ("mmc", "mmc"), ("virtio", "virtio"), ("ata", "sata"),
               ("sas", "sas"), ("iscsi", "iscsi"), ("fc_host", "fc"), ("scsi", "scsi"))


@dataclass(frozen=True)
class BlockDevice:
    name: str  # kernel name: "sdb", "nvme0n1p2", "loop3"
    path: str  # "/dev/sdb"
    size: int  # bytes
    model: str | None = None
    serial: str | None = None
    transport: str | None = None  # "sata", "usb", "nvme", "virtio", "loop", …
    removable: bool = False
    read_only: bool = False
    backing_file: str | None = None  # loop devices
    partition: int | None = None  # partition number, None for a whole disk
    start: int | None = None  # byte offset of a partition on its disk
    partitions: tuple[BlockDevice, ...] = field(default_factory=tuple)

    @property
    def is_disk(self) -> bool:
        return self.partition is None


def list_block_devices(sys_block: str = SYS_BLOCK, dev: str = "/dev") -> list[BlockDevice]:
    """Every whole disk with its partitions, sorted by name."""
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(_SKIP_PREFIXES):
            continue
        disk = _disk(os.path.join(sys_block, name), dev)
        if disk is not None:
            out.append(disk)
    return out


def find_block_device(path: str, sys_block: str = SYS_BLOCK) -> BlockDevice | None:
    """The disk or partition ``path`` (a ``/dev`` node) is, or None if it is not a listed block device."""
    try:
        real = os.path.realpath(path)
        rdev = os.stat(real).st_rdev
    except OSError:
        return None
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    for disk in list_block_devices(sys_block):
        for d in (disk, *disk.partitions):
            if _read_text(os.path.join("/sys/class/block", d.name, "dev")) == want:
                return d
    return None


def _disk(sysdir: str, dev: str) -> BlockDevice | None:
    name = os.path.basename(sysdir)
    sectors = _read_int(os.path.join(sysdir, "size"))
    if not sectors:
        return None
    hw = os.path.join(sysdir, "device")
    udev = _udev(sysdir)
    serial = (_read_text(os.path.join(hw, "serial")) or _vpd_serial(os.path.join(hw, "vpd_pg80"))
              or udev.get("ID_SERIAL_SHORT"))
    model = _read_text(os.path.join(hw, "model")) or udev.get("ID_MODEL")
    vendor = _read_text(os.path.join(hw, "vendor")) or udev.get("ID_VENDOR")
    if vendor and model and not model.startswith(vendor) and not vendor.startswith("0x"):
        model = f"{vendor} {model}"
    parts = []
    for entry in sorted(os.listdir(sysdir), key=_natural):
        pdir = os.path.join(sysdir, entry)
        number = _read_int(os.path.join(pdir, "partition"))
        if number is None:
            continue
        psize = _read_int(os.path.join(pdir, "size")) or 0
        start = _read_int(os.path.join(pdir, "start"))
        parts.append(BlockDevice(entry, os.path.join(dev, entry), psize * 512, partition=number,
                                 start=None if start is None else start * 512,
                                 read_only=_read_int(os.path.join(pdir, "ro")) == 1))
    return BlockDevice(
        name, os.path.join(dev, name), sectors * 512, model=model, serial=serial,
        transport=_transport(sysdir, name, udev), removable=_read_int(os.path.join(sysdir, "removable")) == 1,
        read_only=_read_int(os.path.join(sysdir, "ro")) == 1,
        backing_file=_read_text(os.path.join(sysdir, "loop", "backing_file")), partitions=tuple(parts),
    )


def _udev(sysdir: str) -> dict[str, str]:
    major, _, minor = (_read_text(os.path.join(sysdir, "dev")) or "").partition(":")
    try:
        return udev_properties(int(major), int(minor))
    except ValueError:
        return {}


def _transport(sysdir: str, name: str, udev: dict[str, str]) -> str | None:
    if name.startswith("loop"):
        return "loop"
    if name.startswith(("md", "dm-")):
        return None
    bus = udev.get("ID_BUS")
    if bus in ("usb", "ata"):
        return "usb" if bus == "usb" else "sata"
    real = os.path.realpath(sysdir).split(os.sep)
    for needle, transport in _TRANSPORTS:
        if any(part.startswith(needle) for part in real):
            return transport
    return None


def _natural(name: str) -> tuple[str, int]:
    """``sdb10`` after ``sdb9``."""
    digits = len(name) - len(name.rstrip("0123456789"))
    return (name[: len(name) - digits], int(name[len(name) - digits :] or 0)) if digits else (name, -1)
