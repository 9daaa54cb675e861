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
directory clusters.  A chain that leaves a file's first cluster for a free one part-way is not looked
for: it needs every cluster of every file followed, where this needs only directories.
"""

from __future__ import annotations

from collections.abc import Callable

from ..blocks import BlockSource
from ..errors import CorruptImageError
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
