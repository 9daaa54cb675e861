"""FAT12/16/32 (``fat_dir.py``) and exFAT (dissect.fat) adapters of ``tree.FileTree``.

Cluster chains are followed here, not by dissect (exFAT directories: dissect's walk, bounded by
``_ExFAT``), with a guard: a chain may visit each cluster once, so a cyclic FAT (damage or a hostile
image) is an error instead of a hang.  FAT and exFAT
timestamps carry no time zone (exFAT's optional UTC offset is applied when set); they are reported
as if they were UTC.  Spec: Microsoft "FAT: General Overview of On-Disk Format" v1.03 and the exFAT
file system specification.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from typing import Any

from dissect.fat import exfat as dexfat

from ..blocks import read_at
from ..errors import CorruptImageError
from . import exfat, fat
from .fat import FatBoot
from .fat_dir import FatNode, FatVolume, chain_runs
from .tree import BlockFile, Entry, Layout, runs_from_clusters

EXFAT_EOC = 0xFFFFFFF8


def _dos_ns(stamp: int, tz: int = 0) -> int | None:
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
                     mtime_ns=_dos_ns(node.wrt), inode=node.cluster)

    def layout(self, node: FatNode, stream: str | None) -> Layout:
        if not node.size:
            return Layout(0, [])
        label = f"{self.fs_type} file {node.name!r}"
        if node.cluster == 0:
            raise CorruptImageError(f"{label}: its size is {node.size} but it has no first cluster")
        runs: list[tuple[int | None, int]] = list(self.vol.runs(node.cluster, label))
        return Layout(node.size, runs_from_clusters(runs, self.cluster_size, self._data, node.size, label))


class _ExFAT(dexfat.ExFAT):  # type: ignore[misc]
    """dissect's exFAT follows the root's and directories' FAT chains until an end-of-chain mark only:
    a cyclic chain would loop (and grow its list) forever.  Here a chain ends with an error at a loop,
    a free, bad or out-of-range entry, or a FAT that ends first."""

    def get_cluster_chain(self, starting_cluster: int) -> list[int]:
        if starting_cluster < 2:
            return []
        limit = int(self.cluster_count) + 2
        chain: list[int] = []
        cluster = starting_cluster
        while cluster < EXFAT_EOC:  # 0xFFFFFFF8 and up end a chain (0xFFFFFFFF as written)
            if not 2 <= cluster < limit or len(chain) >= limit - 2:
                raise CorruptImageError(f"exfat directory chain from cluster {starting_cluster} is damaged "
                                        f"(entry {cluster:#x} after {len(chain)} clusters)")
            self.fat.seek(cluster * 4)
            raw = self.fat.read(4)
            if len(raw) != 4:
                raise CorruptImageError(f"exfat directory chain from cluster {starting_cluster} runs past the FAT")
            chain.append(cluster)
            cluster = int.from_bytes(raw, "little")
        return chain


class ExfatBackend:
    """exFAT: dissect.fat parses the whole directory tree when the volume is opened."""

    fs_type = "exfat"
    dot_entries = False
    case_insensitive = True

    def __init__(self, fh: BlockFile) -> None:
        self.fs = _ExFAT(fh)
        unclean = exfat.volume_state(fh.source)
        self.warnings = [] if unclean is None else [f"exfat: {unclean}: {UNCLEAN}"]
        self._heap = self.fs.cluster_heap_sector * self.fs.sector_size
        self._limit = self.fs.cluster_count + 2

    def root(self) -> Any:
        return self.fs.files["/"]

    def label(self, node: Any) -> str:
        return f"directory starting at cluster {node[0].stream.location}"

    def children(self, node: Any) -> list[tuple[str, Any]]:
        return list((node[1] or {}).items())

    def load(self, ref: Any) -> Any:
        return ref

    def key(self, node: Any) -> int | None:
        return int(node[0].stream.location)

    def describe(self, node: Any, name: str, path: str) -> Entry:
        meta, stream = node[0].metadata, node[0].stream
        kind = "dir" if meta.attributes.directory else "file"
        if path == "/":
            return Entry(name=name, path=path, type="dir", inode=int(stream.location))
        mtime = _dos_ns(int(meta.modified_time), int(meta.modified_timezone))
        if mtime is not None:
            mtime += int(meta.modified_offset) * 10_000_000
        return Entry(name=name, path=path, type=kind, size=0 if kind == "dir" else int(stream.data_length),
                     mtime_ns=mtime, inode=int(stream.location))

    def layout(self, node: Any, stream: str | None) -> Layout:
        st = node[0].stream
        size = int(st.data_length)
        if not size:
            return Layout(0, [])
        label = f"exfat file starting at cluster {st.location}"
        cluster = self.fs.cluster_size
        if st.flags.not_fragmented:
            count = -(-size // cluster)
            if st.location < 2 or st.location - 2 + count > self.fs.cluster_count:
                raise CorruptImageError(f"{label}: clusters lie outside the volume")
            runs: list[tuple[int | None, int]] = [(st.location - 2, count)]
        else:
            def next_of(c: int) -> int:
                self.fs.fat.seek(c * 4)
                return int.from_bytes(self.fs.fat.read(4), "little")

            runs = list(chain_runs(int(st.location), next_of, EXFAT_EOC, 0xFFFFFFF7, self._limit, label))
        return Layout(size, runs_from_clusters(runs, cluster, self._heap, size, label))
