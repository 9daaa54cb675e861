"""exFAT adapter of ``tree.FileTree`` through our own directory reader (exFAT specification §6–§7).

It replaces dissect.fat's exFAT directory parser, which read the whole tree when the volume was opened
and decoded each File Name entry on its own: a character whose UTF-16 surrogate pair spans two entries
(an emoji as the 15th, 30th … unit of a name, common on phones' cards) made the whole volume unreadable.
It also joined every secondary entry after the stream into the name (a Vendor Extension or Vendor
Allocation entry, §7.8–§7.9, became part of it) and ignored ValidDataLength.

Here a directory is read when it is listed, a few clusters at a time.  An entry set (``exfat.entry_sets``,
shared with the used-only check) is its File entry (0x85) and SecondaryCount secondary entries in use,
the first a Stream Extension (0xC0); its name is NameLength UTF-16 units of the File Name entries (0xC1)
after the stream, decoded as a whole (an unpaired surrogate is written ``%u`` and its four hex digits,
e.g. ``%uD83D``, as FAT's long names are).  A set that is cut short, lacks its stream, or fails its
SetChecksum (§6.3.3) is listed as damaged, under its name where that can be read, and the listing goes on
after it.  Past ValidDataLength a file reads as zeros (§7.6.5).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..blocks import read_at
from ..errors import CorruptImageError
from . import exfat
from .fat_dir import chain_runs, long_name
from .tree import BlockFile, Entry, Layout, runs_from_clusters
from .tree_fat import UNCLEAN, dos_ns

EXFAT_EOC = 0xFFFFFFF8
EXFAT_BAD = 0xFFFFFFF7
ENTRY = exfat.DIR_ENTRY_SIZE
STREAM, NAME = 0xC0, 0xC1
ATTR_DIRECTORY = 0x10
NO_FAT_CHAIN = 0x02
MAX_DIRECTORY = 256 << 20  # §6.2.1: a directory holds at most 2,097,152 entries
PIECE = 64 << 10  # bytes of a directory read at once
# File entry: SecondaryCount, SetChecksum, FileAttributes, LastModifiedTimestamp, its 10 ms increment and
# its UTC offset; Stream Extension: flags, NameLength, ValidDataLength, FirstCluster, DataLength.
FILE_ENTRY = struct.Struct("<xBHH6xI5xBxB8x")
STREAM_ENTRY = struct.Struct("<xBxB4xQ4xIQ")


@dataclass(frozen=True, slots=True)
class ExfatNode:
    name: str
    attributes: int = ATTR_DIRECTORY
    flags: int = 0  # the stream's GeneralSecondaryFlags
    first: int = 0  # FirstCluster
    size: int = 0  # DataLength
    valid: int = 0  # ValidDataLength
    mtime_ns: int | None = None
    error: str = ""  # a damaged entry set: why
    root: bool = False

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & ATTR_DIRECTORY)


def set_checksum(entries: bytes) -> int:
    """§6.3.3 EntrySetChecksum: every byte of the set but the File entry's own checksum field."""
    value = 0
    for i, byte in enumerate(entries):
        if i not in (2, 3):
            value = ((value >> 1) | (value & 1) << 15) + byte & 0xFFFF
    return value


def _parse_set(raw: bytes, at: int) -> ExfatNode:
    """One entry set (File entry first, all its secondaries) found at byte ``at`` of the volume."""
    count, checksum, attributes, modified, inc10ms, tz = FILE_ENTRY.unpack_from(raw)
    name = f"(entry set at offset {at:#x})"
    if len(raw) < 2 * ENTRY or raw[ENTRY] != STREAM:
        return ExfatNode(name, error=f"its entry set at offset {at:#x} has no Stream Extension")
    flags, name_length, valid, first, size = STREAM_ENTRY.unpack_from(raw, ENTRY)
    units = bytearray()
    for pos in range(2 * ENTRY, len(raw), ENTRY):
        if raw[pos] != NAME:
            break
        units += raw[pos + 2 : pos + ENTRY]
    if name_length and len(units) >= 2 * name_length:
        name = long_name([bytes(units[: 2 * name_length])])
    if len(raw) < (count + 1) * ENTRY:
        return ExfatNode(name, error=f"its entry set at offset {at:#x} ends after {len(raw) // ENTRY - 1} of its "
                                     f"{count} secondary entries")
    if set_checksum(raw) != checksum:
        return ExfatNode(name, error=f"its entry set at offset {at:#x} fails its checksum")
    if not name_length or len(units) < 2 * name_length:
        return ExfatNode(name, error=f"its entry set at offset {at:#x} holds fewer name characters than its "
                                     f"NameLength {name_length}")
    mtime = dos_ns(modified, tz)
    if mtime is not None:
        mtime += inc10ms * 10_000_000
    return ExfatNode(name, attributes, flags, first, size, valid, mtime)


class ExfatBackend:
    """exFAT through ``exfat._Volume`` (boot sector, FAT) and the directory reader above."""

    fs_type = "exfat"
    dot_entries = False
    case_insensitive = True

    def __init__(self, fh: BlockFile) -> None:
        source = fh.source
        boot = exfat.probe(source)
        if boot is None:
            raise CorruptImageError("exfat: the boot sector is gone")
        self.source = source
        self.boot = boot
        self.vol = exfat._Volume(source, boot)
        unclean = exfat.volume_state(source)
        self.warnings = [] if unclean is None else [f"exfat: {unclean}: {UNCLEAN}"]
        self._limit = boot.cluster_count + 2
        self._heap = boot.cluster_offset(2)

    def _next(self, cluster: int) -> int:
        off = (self.boot.fat_offset << self.boot.sector_shift) + 4 * cluster
        if off + 4 > self.source.size:
            raise CorruptImageError(f"exfat: FAT entry {cluster} at offset {off:#x} lies past the end of the source")
        return self.vol.fat_entry(cluster)

    def root(self) -> ExfatNode:
        runs = self._runs(self.boot.root_cluster, None, "root directory")
        size = sum(n for _, n in runs) * self.boot.cluster_size
        if size > MAX_DIRECTORY:
            raise CorruptImageError(f"exfat: the root directory's chain holds {size} bytes (at most {MAX_DIRECTORY})")
        return ExfatNode("", first=self.boot.root_cluster, size=size, valid=size, root=True)

    def _runs(self, first: int, node: ExfatNode | None, label: str) -> list[tuple[int, int]]:
        """``(cluster - 2, count)`` runs of ``node``'s clusters (the root's: its whole chain)."""
        if node is not None and node.flags & NO_FAT_CHAIN:
            count = -(-node.size // self.boot.cluster_size)
            if not first >= 2 or first - 2 + count > self.boot.cluster_count:
                raise CorruptImageError(f"exfat {label}: its clusters lie outside the volume")
            return [(first - 2, count)]
        return chain_runs(first, self._next, EXFAT_EOC, EXFAT_BAD, self._limit, f"exfat {label}")

    def label(self, node: ExfatNode) -> str:
        return "root directory" if node.root else f"directory starting at cluster {node.first}"

    def children(self, node: ExfatNode) -> Iterator[tuple[str, ExfatNode]]:
        if node.error:
            raise CorruptImageError(f"exfat: {node.error}")
        if not node.root and node.size > MAX_DIRECTORY:
            raise CorruptImageError(f"exfat: {self.label(node)} claims {node.size} bytes (at most {MAX_DIRECTORY})")
        if not node.root and not node.size:
            return
        for at, data in exfat.entry_sets(self._entries(node)):
            child = _parse_set(data, at)
            yield child.name, child

    def _entries(self, node: ExfatNode) -> Iterator[tuple[int, bytes]]:
        """``(volume offset, 32-byte entry)`` of a directory, a piece at a time."""
        cs = self.boot.cluster_size
        left = node.size
        for cluster, count in self._runs(node.first, None if node.root else node, self.label(node)):
            start = self._heap + cluster * cs
            length = min(count * cs, left)
            left -= length
            for off in range(start, start + length, PIECE):
                n = min(PIECE, start + length - off)
                if off + n > self.source.size:
                    raise CorruptImageError(f"exfat: {self.label(node)} at offset {off:#x} lies past the end of "
                                            "the source")
                data = read_at(self.source, off, n)
                for pos in range(0, n - ENTRY + 1, ENTRY):
                    yield off + pos, data[pos : pos + ENTRY]
            if left <= 0:
                return

    def load(self, ref: ExfatNode) -> ExfatNode:
        return ref

    def key(self, node: ExfatNode) -> int | None:
        return node.first or None

    def describe(self, node: ExfatNode, name: str, path: str) -> Entry:
        if node.root:
            return Entry(name=name, path=path, type="dir", inode=node.first)
        if node.error:
            raise CorruptImageError(f"exfat: {node.error}")
        kind = "dir" if node.is_dir else "file"
        return Entry(name=name, path=path, type=kind, size=0 if node.is_dir else node.size,
                     mtime_ns=node.mtime_ns, inode=node.first or None)

    def layout(self, node: ExfatNode, stream: str | None) -> Layout:
        if node.error:
            raise CorruptImageError(f"exfat: {node.error}")
        size = node.size
        if not size:
            return Layout(0, [])
        label = f"exfat file starting at cluster {node.first}"
        runs: list[tuple[int | None, int]] = list(self._runs(node.first, node, label))
        pieces = runs_from_clusters(runs, self.boot.cluster_size, self._heap, size, label)  # all of it is checked
        # Past ValidDataLength a file reads as zeros (§7.6.5): Windows and Linux extend or preallocate a file
        # without writing its new clusters, which keep whatever they held before.
        valid = min(node.valid, size)
        if valid < size:
            pieces = [(pos, at, min(n, valid - pos)) for pos, at, n in pieces if pos < valid]
            pieces.append((valid, None, size - valid))
        return Layout(size, pieces)
