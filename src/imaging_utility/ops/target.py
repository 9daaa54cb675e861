"""A restore target: is it safe to write, and what is on it now (shown before anything is overwritten)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from ..blocks import WindowSource
from ..devices.blockdev import holders, kernel_name
from ..devices.mounts import check_target_safe
from ..devices.source import FileSource, open_error
from ..errors import Error, RefusedError, SourceIOError, UnsupportedError
from ..filesystems import FilesystemInfo, detect
from ..partitions import PartitionTable, read_partitions


@dataclass
class TargetView:
    """What a block device holds before a restore: its table and the filesystem in each partition."""

    path: str
    name: str  # kernel name, e.g. "sdc" or "loop3": what the user types to confirm
    size: int
    sector_size: int
    table: PartitionTable
    filesystems: dict[int, FilesystemInfo | None] = field(default_factory=dict)
    volume: FilesystemInfo | None = None  # a filesystem at offset 0 of a disk without a table

    @property
    def blank(self) -> bool:
        """No partition table and no filesystem: nothing a user could lose by mistake."""
        return self.table.scheme is None and self.volume is None


def _detect(source: FileSource | WindowSource) -> FilesystemInfo | None:
    try:
        return detect(source)
    except (UnsupportedError, SourceIOError):
        return None


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def check_device_target(path: str) -> None:
    """Refuse (exit 9, before anything is written) a device that is mounted, holds a mounted partition or
    active swap, has holders, or cannot be opened exclusively."""
    check_target_safe(path)
    held = holders(kernel_name(path))
    if held:
        raise RefusedError(f"restore target {path} is in use: {', '.join(held)} built on it (device-mapper, "
                           "RAID, LVM); remove them first")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise RefusedError(f"restore target {path} is busy: another program holds it open exclusively") \
                from None
        raise open_error(path, e, what="restore target") from None
    os.close(fd)


def inspect_target(path: str) -> TargetView:
    """Read the target's table and the filesystems in it (errors reading it are not fatal: shown as unknown)."""
    with FileSource(path) as src:
        try:
            table = read_partitions(src)
        except Error:
            table = PartitionTable(None, None, src.sector_size)
        view = TargetView(path, kernel_name(path), src.size, src.sector_size, table)
        if table.scheme is None:
            view.volume = _detect(src)
        for part in table.partitions:
            view.filesystems[part.number] = _detect(WindowSource(src, part.offset, part.length))
    return view
