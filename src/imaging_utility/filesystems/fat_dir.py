"""FAT12/16/32 directories and cluster chains, read through ``BlockSource.readinto_at``.

Spec: Microsoft "FAT: General Overview of On-Disk Format" v1.03 (fatgen103) §6 (directory entries),
§7 (long names: ordinals, checksum, UTF-16 name pieces) and §4 (the FAT).  The geometry, and so the
FAT type (FAT32 exactly when BPB_FATSz16 is 0, as Linux and Windows decide), comes from
``fat.FatBoot``.

Names: a long name whose entries are complete and whose checksum matches the short entry is used,
else the 8.3 name (with the Windows NT lower-case bits).  A long name is UTF-16: an unpaired
surrogate (legal on disk, not text) is written ``%uD800``, so the rest of the name, and the rest of
the directory, still list.  Only a subdirectory's first two entries, ``.`` and ``..``, are its own;
the root has none, so a root entry named ``..`` is a real (hostile) name and is listed escaped.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..blocks import BlockSource
from ..errors import CorruptImageError
from .fat import EXTFLAGS_NO_MIRROR, FatBoot

__all__ = ["FatNode", "FatVolume", "chain_runs", "long_name"]

DIRENT = struct.Struct("<11sBBBHHHHHHHI")  # DIR_Name .. DIR_FileSize
LDIRENT = struct.Struct("<B10sBBB12sH4s")  # LDIR_Ord, Name1, Attr, Type, Chksum, Name2, FstClusLO, Name3
ENTRY_SIZE = 32
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_LONG_NAME = 0x0F
ATTR_LONG_NAME_MASK = 0x3F
LAST_LONG_ENTRY = 0x40
DELETED = 0xE5
KANJI_E5 = 0x05  # a first byte of 0xE5 is stored as 0x05
NT_LOWER_BASE = 0x08
NT_LOWER_EXT = 0x10
PAGE = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class FatNode:
    """One directory entry (or the root: ``root`` set, no entry of its own)."""

    name: str
    short: bytes
    attr: int
    cluster: int
    size: int
    wrt: int  # DIR_WrtDate << 16 | DIR_WrtTime
    root: bool = False

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIRECTORY)


def long_name(pieces: list[bytes]) -> str:
    """The name in a sequence of long-name pieces (in order), up to its 0x0000 terminator; unpaired
    surrogates escaped as ``%uXXXX``."""
    raw = b"".join(pieces)
    for i in range(0, len(raw) - 1, 2):
        if raw[i] == 0 and raw[i + 1] == 0:
            raw = raw[:i]
            break
    text = raw[: len(raw) & ~1].decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub(lambda m: f"%u{ord(m.group()):04X}", text)


def short_checksum(name: bytes) -> int:
    s = 0
    for b in name:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


def _short_name(raw: bytes, nt: int) -> str:
    first = bytes([DELETED]) if raw[0] == KANJI_E5 else raw[:1]
    base = (first + raw[1:8]).decode("cp437").rstrip(" ")
    ext = raw[8:11].decode("cp437").rstrip(" ")
    base = base.lower() if nt & NT_LOWER_BASE else base
    ext = ext.lower() if nt & NT_LOWER_EXT else ext
    return f"{base}.{ext}" if ext else base


def chain_runs(first: int, next_of: Callable[[int], int], eoc: int, bad: int, limit: int,
               label: str) -> list[tuple[int, int]]:
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


class FatVolume:
    """The FAT and the directories of one FAT12/16/32 volume.  Not thread-safe (``FileTree`` locks)."""

    def __init__(self, source: BlockSource, boot: FatBoot) -> None:
        self.source = source
        self.boot = boot
        self.bits = boot.bits
        copy = boot.ext_flags & 0x0F if boot.ext_flags & EXTFLAGS_NO_MIRROR else 0
        self.fat_offset = (boot.reserved_sectors + min(copy, boot.num_fats - 1) * boot.fat_sectors) \
            * boot.bytes_per_sector
        self.fat_bytes = boot.fat_sectors * boot.bytes_per_sector
        self.limit = boot.cluster_count + 2
        self.eoc = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.bits]
        self.bad = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}[self.bits]
        self._pages: OrderedDict[int, bytes] = OrderedDict()

    def _fat_bytes(self, at: int, n: int) -> bytes:
        out = b""
        while n:
            page, within = divmod(at, PAGE)
            data = self._pages.get(page)
            if data is None:
                length = max(0, min(PAGE, self.fat_bytes - page * PAGE))
                buf = bytearray(length)
                self.source.readinto_at(self.fat_offset + page * PAGE, buf)
                data = self._pages[page] = bytes(buf)
                if len(self._pages) > 64:
                    self._pages.popitem(last=False)
            else:
                self._pages.move_to_end(page)
            take = min(n, len(data) - within)
            if take <= 0:
                raise CorruptImageError(f"{self.boot.type}: FAT entry at byte {at} lies past the FAT")
            out += data[within : within + take]
            at += take
            n -= take
        return out

    def next_of(self, cluster: int) -> int:
        if self.bits == 12:
            v = int.from_bytes(self._fat_bytes(cluster + cluster // 2, 2), "little")
            return v >> 4 if cluster & 1 else v & 0xFFF
        size = self.bits // 8
        v = int.from_bytes(self._fat_bytes(cluster * size, size), "little")
        return v & 0x0FFFFFFF if self.bits == 32 else v

    def runs(self, first: int, label: str) -> list[tuple[int, int]]:
        return chain_runs(first, self.next_of, self.eoc, self.bad, self.limit, label)

    def root(self) -> FatNode:
        return FatNode("", b"", ATTR_DIRECTORY, self.boot.root_cluster if self.bits == 32 else 0, 0, 0, True)

    def _dir_pieces(self, node: FatNode) -> Iterator[bytes]:
        """The directory's bytes, a cluster (or, for the FAT12/16 root, a sector) at a time."""
        b = self.boot
        if node.root and self.bits != 32:
            start = (b.reserved_sectors + b.num_fats * b.fat_sectors) * b.bytes_per_sector
            for k in range(b.root_dir_sectors):
                buf = bytearray(b.bytes_per_sector)
                self.source.readinto_at(start + k * b.bytes_per_sector, buf)
                yield bytes(buf)
            return
        if node.cluster == 0:
            return
        cs = b.cluster_size
        for first, count in self.runs(node.cluster, f"{b.type} directory {node.name or '/'}"):
            for k in range(count):
                buf = bytearray(cs)
                self.source.readinto_at(b.data_offset + (first + k) * cs, buf)
                yield bytes(buf)

    def entries(self, node: FatNode) -> Iterator[tuple[str, FatNode]]:
        """``(name, node)`` of each entry, in on-disk order; deleted entries, volume labels and a
        subdirectory's own ``.`` and ``..`` left out."""
        pieces: list[bytes] = []
        expect = 0  # next long-name ordinal expected; 0: none pending
        checksum = -1
        index = 0
        for data in self._dir_pieces(node):
            for off in range(0, len(data) - ENTRY_SIZE + 1, ENTRY_SIZE):
                raw = data[off : off + ENTRY_SIZE]
                if raw[0] == 0:
                    return
                position, index = index, index + 1
                if raw[0] == DELETED:
                    pieces, expect = [], 0
                    continue
                attr = raw[11]
                if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME:
                    order, name1, _, _, chk, name2, _, name3 = LDIRENT.unpack(raw)
                    if order & LAST_LONG_ENTRY:
                        pieces, expect, checksum = [], order & 0x1F, chk
                    elif order != expect or chk != checksum:
                        pieces, expect = [], 0  # an orphan piece: Windows ignores it too
                        continue
                    if expect == 0:
                        continue
                    pieces.insert(0, name1 + name2 + name3)
                    expect -= 1
                    continue
                short, attr, nt, _, _, _, _, hi, wtime, wdate, lo, size = DIRENT.unpack(raw)
                complete = bool(pieces) and expect == 0 and short_checksum(short) == checksum
                name = long_name(pieces) if complete else _short_name(short, nt)
                pieces, expect = [], 0
                if attr & ATTR_VOLUME_ID:
                    continue
                if not node.root and ((position == 0 and short == b".          ")
                                      or (position == 1 and short == b"..         ")):
                    continue
                cluster = lo | (hi << 16 if self.bits == 32 else 0)
                yield name, FatNode(name, short, attr, cluster, size, wdate << 16 | wtime)
