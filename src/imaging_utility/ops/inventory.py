"""What can be imaged or restored onto: disks and partitions with their filesystems and mounts.

``list_volumes`` is quick (sysfs and the mount table, nothing opened); ``probe``
then reads each disk's partition table and each volume's filesystem (type,
label, used bytes) and may take a moment, so a picker shows the list first and
fills it in.  Partitions the kernel made no ``/dev`` node for (this happens with
loop devices attached without ``-P``) are found in the partition table and
offered as a window (``--offset/--length``) of their disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ..blocks import BlockSource, WindowSource
from ..devices.inventory import BlockDevice, list_block_devices
from ..devices.mounts import MountState, mount_state
from ..devices.source import FileSource
from ..errors import Error
from ..filesystems import allocation_map, detect
from ..partitions.table import read_partitions


@dataclass
class Volume:
    """A disk or a partition, as a picker row."""

    name: str  # "sdb", "sdb1", "loop3 #1" for a partition without a node
    path: str  # the node to open; for a partition without a node, its disk's
    size: int
    offset: int = 0  # where the volume starts inside ``path`` (non-zero only without a node)
    number: int | None = None  # partition number; None for a whole disk
    model: str | None = None
    serial: str | None = None
    transport: str | None = None
    fs: str | None = None
    label: str | None = None
    used: int | None = None
    mounts: tuple[str, ...] = ()  # "rw /srv", "ro /boot", "swap"
    read_write: bool = False  # it, a partition of it or a device built on it is mounted read-write
    note: str = ""
    partitions: list[Volume] = field(default_factory=list)

    @property
    def is_disk(self) -> bool:
        return self.number is None

    @property
    def mounted(self) -> bool:
        return bool(self.mounts)

    @property
    def windowed(self) -> bool:
        """A partition without its own node: image it as ``--offset/--length`` of its disk."""
        return self.number is not None and self.offset > 0


def list_volumes(devices: list[BlockDevice] | None = None) -> list[Volume]:
    """Every disk and its partitions with mount state; filesystems are filled in by ``probe``."""
    out = []
    for disk in list_block_devices() if devices is None else devices:
        vol = _volume(disk)
        vol.partitions = [_volume(p) for p in disk.partitions]
        out.append(vol)
    return out


def _volume(dev: BlockDevice) -> Volume:
    vol = Volume(dev.name, dev.path, dev.size, number=dev.partition, model=dev.model, serial=dev.serial,
                 transport=dev.transport)
    try:
        state = mount_state(dev.path)
    except (Error, OSError):
        return vol
    vol.mounts, vol.read_write = _mounts(state)
    return vol


def _mounts(state: MountState) -> tuple[tuple[str, ...], bool]:
    seen = []
    for m in state.mounts:
        text = "swap" if m.fstype == "swap" else f"{'ro' if m.read_only else 'rw'} {m.mount_point}"
        if text not in seen:
            seen.append(text)
    return tuple(seen), state.read_write


def probe(vol: Volume) -> Volume:
    """A copy of ``vol`` with its filesystem, label and used bytes, and a disk's partitions from its
    table when the kernel lists none.  Never raises: what cannot be read becomes ``note``."""
    vol = replace(vol, partitions=list(vol.partitions))
    try:
        with FileSource(vol.path) as src:
            if vol.is_disk and not vol.partitions:
                vol.partitions = _table_partitions(vol, src)
            if vol.is_disk:
                vol.partitions = [_probe_fs(p, WindowSource(src, p.offset, p.size) if p.windowed else None)
                                  for p in vol.partitions]
            if not vol.partitions or not vol.is_disk:
                _fill_fs(vol, src)
    except Error as e:
        vol.note = str(e)
    return vol


def _probe_fs(part: Volume, window: BlockSource | None) -> Volume:
    part = replace(part)
    if window is not None:
        _fill_fs(part, window)
        return part
    try:
        with FileSource(part.path) as src:
            _fill_fs(part, src)
    except Error as e:
        part.note = str(e)
    return part


def _table_partitions(disk: Volume, src: FileSource) -> list[Volume]:
    table = read_partitions(src)
    return [Volume(f"{disk.name} #{p.number}", disk.path, p.length, offset=p.offset, number=p.number,
                   note=f"no /dev node: imaged as --offset {p.offset} --length {p.length} of {disk.path}")
            for p in table.partitions]


def _fill_fs(vol: Volume, src: BlockSource) -> None:
    try:
        info = detect(src)
    except Error as e:
        vol.note = str(e)
        return
    if info is None:
        return
    vol.fs, vol.label = info.type, info.label
    mount_point = next((m.split(" ", 1)[1] for m in vol.mounts if m.startswith(("rw ", "ro "))), None)
    if mount_point is not None:
        try:
            st = os.statvfs(mount_point)
            vol.used = (st.f_blocks - st.f_bfree) * st.f_frsize
            return
        except OSError:
            pass
    try:
        vol.used = allocation_map(src)[1].used_bytes
    except Error as e:
        vol.note = str(e)
