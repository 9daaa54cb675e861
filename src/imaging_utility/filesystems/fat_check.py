"""Do a FAT volume's directories agree with its FAT?  Every file and directory must start on a cluster the
FAT marks in use.

A FAT volume written by a device that keeps no dirty flag (a camera, a car's recorder, an embedded
system) and then unplugged, or one damaged since, can hold a directory entry whose clusters its FAT
was never told of: the FAT entries are still 0 (free).  Used-only imaging maps from the FAT alone
(``fat.used_ranges``), so it would drop that file's data; so this walks every directory from the root
and names the first entry that starts on a free cluster, and used-only refuses the volume (images it
in full with ``--used-only=auto``), as for a dirty one.  A directory that cannot be walked (its chain
loops, leaves the volume or reaches a free or bad cluster) cannot vouch for what it holds either.

Bounded: each directory is read once (by its first cluster), so the walk reads at most the volume's
directory clusters.

A chain that turns to a free cluster part-way through a file (``free_link``) is found from the FAT
itself, without following any chain: the clusters its used entries link to, sorted and deduplicated a
million entries at a time (at C speed), must miss every run of free clusters.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable

from ..blocks import BlockSource
from ..errors import CorruptImageError
from ._bitmap import RunList
from .fat import FatBoot
from .fat_dir import FatNode, FatVolume


def free_start(source: BlockSource, boot: FatBoot, in_use: Callable[[int], bool]) -> str | None:
    """``None`` when every entry starts on a cluster ``in_use`` says is used (or has none), else what was
    found.  ``in_use`` is the map used-only keeps (the union of the FAT copies)."""
    volume = FatVolume(source, boot)
    stack: list[tuple[str, FatNode]] = [("", volume.root())]
    seen: set[int] = set()
    try:
        while stack:
            path, node = stack.pop()
            if not _inside(volume, node, source.size):
                continue  # a truncated source: the map refuses the volume itself, naming where it ends
            for name, entry in volume.entries(node):
                child = f"{path}/{name}"
                if not 2 <= entry.cluster < volume.limit:
                    continue  # no data (an empty file), or none inside the volume to keep
                if not in_use(entry.cluster):
                    kind = "directory" if entry.is_dir else "file"
                    return (f"its {kind} {child} starts at cluster {entry.cluster}, which the FAT marks free "
                            "(written without its FAT, or damaged; run fsck.fat)")
                if entry.is_dir and entry.cluster not in seen:
                    seen.add(entry.cluster)
                    stack.append((child, entry))
    except CorruptImageError as e:
        return f"a directory cannot be read to check it against the FAT ({e}; run fsck.fat)"
    return None


def _inside(volume: FatVolume, node: FatNode, size: int) -> bool:
    """Whether every cluster of directory ``node`` lies inside a source of ``size`` bytes."""
    if node.root and volume.bits != 32:
        return True  # the FAT12/16 root lies before the data area
    b = volume.boot
    label = f"{b.type} directory {node.name or '/'}"
    return all(b.data_offset + (first + count) * b.cluster_size <= size
               for first, count in volume.runs(node.cluster, label))


LINK_PIECE = 1 << 20  # FAT entries per pass: at most this many link targets are held at once
FAT32_MASK = 0x0FFFFFFF


def free_link(source: BlockSource, boot: FatBoot, runs: list[RunList],
              fat: bytes | bytearray | None = None) -> str | None:
    """``None`` when no used FAT entry links to a cluster free in every copy (``runs``: each copy's used
    clusters), else the first such link.  ``fat``: the FAT16/32 entries already read, else they are read."""
    limit = boot.cluster_count + 2
    free = _gaps(runs, limit)
    if not free:
        return None
    volume = FatVolume(source, boot)
    pieces: Iterable[tuple[int, array[int]]]
    if boot.bits == 12:
        pieces = [(0, array("I", (volume.next_of(c) if c >= 2 else 0 for c in range(limit))))]
    else:
        pieces = (_entries(source, volume.fat_offset, boot.bits, first, min(LINK_PIECE, limit - first), fat)
                  for first in range(0, limit, LINK_PIECE))
    starts = [lo for lo, _hi in free]
    for first, values in pieces:
        targets = sorted({v & FAT32_MASK for v in set(values)} if boot.bits == 32 else set(values))
        to = _first_in(targets, free, starts)
        if to is not None:
            at = first + next(k for k, v in enumerate(values) if (v & FAT32_MASK if boot.bits == 32 else v) == to)
            return (f"its FAT links cluster {at} to cluster {to}, which the FAT marks free (a file's chain "
                    "runs into free space: written without its FAT, or damaged; run fsck.fat)")
    return None


def _first_in(targets: list[int], free: list[tuple[int, int]], starts: list[int]) -> int | None:
    """A sorted target inside one of the sorted ``free`` runs (``starts``: their starts), searching from
    the shorter list into the longer."""
    if len(targets) < len(free):
        for t in targets:
            j = bisect_right(starts, t) - 1
            if j >= 0 and t < free[j][1]:
                return t
        return None
    for lo, hi in free:
        i = bisect_left(targets, lo)
        if i < len(targets) and targets[i] < hi:
            return targets[i]
    return None


def _entries(source: BlockSource, fat_offset: int, bits: int, first: int, count: int,
             fat: bytes | bytearray | None) -> tuple[int, array[int]]:
    values = array("I" if bits == 32 else "H")
    at, end = first * values.itemsize, (first + count) * values.itemsize
    if fat is not None and end <= len(fat):
        values.frombytes(fat[at:end])
    else:
        raw = bytearray(end - at)
        source.readinto_at(fat_offset + at, raw)
        values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    if first == 0:
        values[0] = values[1] = 0  # the media byte and the clean-shutdown flags, not links
    return first, values


def _gaps(runs: list[RunList], limit: int) -> list[tuple[int, int]]:
    """Clusters ``[2, limit)`` in no run of any copy, as ``[start, end)`` runs."""
    spans = sorted((s, e) for r in runs for s, e in r)
    out: list[tuple[int, int]] = []
    at = 2
    for s, e in spans:
        if s > at:
            out.append((at, min(s, limit)))
        at = max(at, e)
        if at >= limit:
            break
    if at < limit:
        out.append((at, limit))
    return [(s, e) for s, e in out if s < e]
