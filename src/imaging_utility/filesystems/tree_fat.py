"""FAT12/16/32 and exFAT adapters of ``tree.FileTree`` over dissect.fat.

Cluster chains are followed here, not by dissect (exFAT directories: dissect's walk, bounded by
``_ExFAT``), with a guard: a chain may visit each cluster once, so a cyclic FAT (damage or a hostile
image) is an error instead of a hang.  FAT and exFAT
timestamps carry no time zone (exFAT's optional UTC offset is applied when set); they are reported
as if they were UTC.  Spec: Microsoft "FAT: General Overview of On-Disk Format" v1.03 and the exFAT
file system specification.
"""

from __future__ import annotations

import calendar
from typing import Any

from dissect.fat import exfat as dexfat
from dissect.fat.fat import FATFS, DirectoryEntry, RootDirectory

from ..errors import CorruptImageError
from .tree import BlockFile, Entry, Layout, runs_from_clusters

FAT_EOC = {"fat12": 0xFF8, "fat16": 0xFFF8, "fat32": 0x0FFFFFF8}
FAT_BAD = {"fat12": 0xFF7, "fat16": 0xFFF7, "fat32": 0x0FFFFFF7}
EXFAT_EOC = 0xFFFFFFF8
NT_LOWER_BASE = 0x08
NT_LOWER_EXT = 0x10


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


def _chain_runs(first: int, next_of: Any, eoc: int, bad: int, limit: int, label: str) -> list[tuple[int, int]]:
    """``(cluster - 2, count)`` runs of the chain starting at ``first``; each cluster at most once."""
    runs: list[tuple[int, int]] = []
    seen = 0
    cluster = first
    while True:
        if not 2 <= cluster < limit:
            raise CorruptImageError(f"{label}: cluster chain points to cluster {cluster:#x}, outside the volume")
        seen += 1
        if seen > limit:
            raise CorruptImageError(f"{label}: cluster chain loops")
        if runs and runs[-1][0] + runs[-1][1] == cluster - 2:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((cluster - 2, 1))
        value = next_of(cluster)
        if value >= eoc:
            return runs
        if value in (bad, 0):
            raise CorruptImageError(f"{label}: cluster chain reaches a {'bad' if value else 'free'} cluster "
                                    f"after cluster {cluster:#x}")
        cluster = value


def _fat_name(e: DirectoryEntry) -> str:
    """The long name, else the 8.3 name with the Windows NT case bits (DIR_NTRes 0x08 base, 0x10 ext)."""
    if e.ldirents or e.short_name in (".", ".."):
        return str(e.name)
    base, _, ext = str(e.short_name).partition(".")
    nt = int(e.dirent.DIR_NTRes)
    base = base.lower() if nt & NT_LOWER_BASE else base
    ext = ext.lower() if nt & NT_LOWER_EXT else ext
    return f"{base}.{ext}" if ext else base


class FatBackend:
    dot_entries = True
    case_insensitive = True

    def __init__(self, fh: BlockFile, kind: str) -> None:
        self.fs = FATFS(fh)
        self.fs_type = kind
        self._data = self.fs.first_data_sector * self.fs.sector_size
        self._limit = self.fs.fat.entry_count

    def _runs(self, first: int, label: str) -> list[tuple[int, int]]:
        return _chain_runs(first, self.fs.fat.get, FAT_EOC[self.fs_type], FAT_BAD[self.fs_type], self._limit, label)

    def root(self) -> RootDirectory:
        root = self.fs.root
        if self.fs_type == "fat32":
            root._runlist = self._runs(root.cluster, "fat32 root directory")
        return root

    def label(self, node: DirectoryEntry) -> str:
        return f"directory starting at cluster {node.cluster}" if node.cluster else "root directory"

    def children(self, node: DirectoryEntry) -> list[tuple[str, Any]]:
        if (not isinstance(node, RootDirectory) or self.fs_type == "fat32") and node._runlist is None:
            node._runlist = self._runs(node.cluster, f"directory {node.name!r}") if node.cluster else []
        return [(_fat_name(e), e) for e in node.iterdir() if not e.is_volume_id()]

    def load(self, ref: DirectoryEntry) -> DirectoryEntry:
        return ref

    def key(self, node: DirectoryEntry) -> int | None:
        return int(node.cluster) if node.cluster is not None else 0

    def describe(self, node: DirectoryEntry, name: str, path: str) -> Entry:
        if isinstance(node, RootDirectory):
            return Entry(name=name, path=path, type="dir", inode=node.cluster)
        d = node.dirent
        mtime = _dos_ns((d.DIR_WrtDate << 16) | d.DIR_WrtTime)
        kind = "dir" if node.is_directory() else "file"
        return Entry(name=name, path=path, type=kind, size=0 if kind == "dir" else int(d.DIR_FileSize),
                     mtime_ns=mtime, inode=int(node.cluster))

    def layout(self, node: DirectoryEntry, stream: str | None) -> Layout:
        size = int(node.dirent.DIR_FileSize)
        if not size:
            return Layout(0, [])
        label = f"{self.fs_type} file {node.name!r}"
        runs: list[tuple[int | None, int]] = list(self._runs(node.cluster, label))
        return Layout(size, runs_from_clusters(runs, self.fs.cluster_size, self._data, size, label))


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

            runs = list(_chain_runs(int(st.location), next_of, EXFAT_EOC, 0xFFFFFFF7, self._limit, label))
        return Layout(size, runs_from_clusters(runs, cluster, self._heap, size, label))
