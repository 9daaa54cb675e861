"""FAT12/16/32 adapter of ``tree.FileTree`` over our own reader (``fat_dir.py``); exFAT's is ``tree_exfat.py``.

Cluster chains are followed with a guard: a chain may visit each cluster once, so a cyclic FAT (damage or
a hostile image) is an error instead of a hang.  FAT and exFAT
timestamps carry no time zone (exFAT's optional UTC offset is applied when set); they are reported
as if they were UTC.  Spec: Microsoft "FAT: General Overview of On-Disk Format" v1.03 and the exFAT
file system specification.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from typing import Any

from ..blocks import read_at
from ..errors import CorruptImageError
from . import fat
from .fat import FatBoot
from .fat_dir import FatNode, FatVolume
from .tree import BlockFile, Entry, Layout, runs_from_clusters

EXFAT_EOC = 0xFFFFFFF8
ENTRY_NAME = 0xC1


def dos_ns(stamp: int, tz: int = 0) -> int | None:
    """MS-DOS date/time (date in the high 16 bits) → Unix ns; ``tz`` is exFAT's UTC-offset byte."""
    date, time = stamp >> 16, stamp & 0xFFFF
    year, month, day = 1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F
    hour, minute, sec = time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec < 60):
        return None
    secs = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    if tz & 0x80:
        offset = (tz & 0x7F) - 128 if tz & 0x40 else tz & 0x7F
        secs -= offset * 15 * 60
    return secs * 1_000_000_000


UNCLEAN = "files are shown as their directory entries and FAT say (one written when it stopped may be cut short)"


class FatBackend:
    """FAT12/16/32 through our own reader (``fat_dir.py``): the FAT type as Linux and Windows decide
    it, names that never make a directory unreadable, a root entry named ``..`` listed escaped."""

    dot_entries = False  # ``FatVolume.entries`` leaves out a subdirectory's own "." and ".."
    case_insensitive = True

    def __init__(self, fh: BlockFile, kind: str) -> None:
        boot = FatBoot.from_bytes(read_at(fh.source, 0, 512))
        if boot is None:
            raise CorruptImageError(f"{kind}: the boot sector is gone")
        self.vol = FatVolume(fh.source, boot)
        self.fs_type = boot.type
        unclean = fat.volume_state(fh.source, boot)
        self.warnings = [] if unclean is None else [f"{boot.type}: {unclean}: {UNCLEAN}"]
        self.cluster_size = boot.cluster_size
        self._data = boot.data_offset

    def root(self) -> FatNode:
        root = self.vol.root()
        if self.vol.bits == 32:
            self.vol.runs(root.cluster, f"{self.fs_type} root directory")
        return root

    def label(self, node: FatNode) -> str:
        return "root directory" if node.root else f"directory starting at cluster {node.cluster}"

    def children(self, node: FatNode) -> Iterator[tuple[str, Any]]:
        return self.vol.entries(node)

    def load(self, ref: FatNode) -> FatNode:
        return ref

    def key(self, node: FatNode) -> int | None:
        return node.cluster

    def describe(self, node: FatNode, name: str, path: str) -> Entry:
        if node.root:
            return Entry(name=name, path=path, type="dir", inode=node.cluster or None)
        kind = "dir" if node.is_dir else "file"
        return Entry(name=name, path=path, type=kind, size=0 if kind == "dir" else node.size,
                     mtime_ns=dos_ns(node.wrt), inode=node.cluster)

    def layout(self, node: FatNode, stream: str | None) -> Layout:
        if not node.size:
            return Layout(0, [])
        label = f"{self.fs_type} file {node.name!r}"
        if node.cluster == 0:
            raise CorruptImageError(f"{label}: its size is {node.size} but it has no first cluster")
        runs: list[tuple[int | None, int]] = list(self.vol.runs(node.cluster, label))
        return Layout(node.size, runs_from_clusters(runs, self.cluster_size, self._data, node.size, label))
