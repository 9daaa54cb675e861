"""Files inside images: open a tree (image → partition → filesystem), map bad sectors and corrupt chunks
onto files.  Extraction itself is ``extract.py`` (the walk and the writers) over ``destdir.py`` (DEST).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import stat
from collections.abc import Callable

from ..blocks import BlockSource, MappedSource, WindowSource
from ..errors import CorruptImageError, NotFoundError, PermissionDeniedError, UnsupportedError, UsageError
from ..filesystems import detect
from ..filesystems.imsm import check_table
from ..filesystems.tree import FileTree, open_tree
from ..format import c_image
from ..partitions import Partition, PartitionTable, read_partitions
from ..partitions.table import DYNAMIC_WHY
from ..progress import ProgressCallback, no_progress
from .destdir import sanitize_name
from .extract import ExtractOptions, ExtractReport, extract
from .volumes import named_volume

__all__ = ["ExtractOptions", "ExtractReport", "corrupt_ranges", "damaged_files", "extract", "open_image_tree",
           "sanitize_name", "source_files", "volume_bad_ranges"]


def _open_source(path: str, disk: str | None = None) -> BlockSource:
    from ..devices.source import FileSource
    from ..image.reader import open_image
    from .manifest import open_image_or_set

    if disk is not None or os.path.isdir(path):
        return open_image_or_set(path, disk)  # one disk of a backup set (docs/backup-sets.md)
    with contextlib.suppress(OSError):  # a FIFO or a character device: refused before an open that blocks
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode)):
            raise UnsupportedError(f"{path} is neither an image, a volume file nor a block device")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return open_image(path)  # a split set named without its .001 suffix, or a clear not-found error
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image, volume or device") from None
    except PermissionError:
        raise PermissionDeniedError(f"permission denied reading {path} (devices need root)") from None
    if len(head) == 4 and int.from_bytes(head, "little") == c_image.HEADER_MAGIC:
        return open_image(path)
    return FileSource(path)


def source_files(source: BlockSource) -> tuple[str, ...]:
    """The files a source reads (an image's parts, a volume file or device), through windows."""
    seen: object = source
    for _ in range(8):
        paths = getattr(seen, "paths", None)
        if isinstance(paths, list):
            return tuple(str(p) for p in paths)
        path = getattr(seen, "path", None)
        if isinstance(path, str):
            return (path,)
        seen = getattr(seen, "base", None)
        if seen is None:
            break
    return ()


def open_image_tree(path: str, *, partition: int | None = None, offset: int | None = None,
                    length: int | None = None, lv: str | None = None, subvolume: str | None = None,
                    disk: str | None = None, volume_name: str | None = None) -> tuple[FileTree, BlockSource]:
    """The file tree in an image, a raw volume file, a device or one disk of a backup set (and in one of its
    partitions, a window or the volume the servers call ``volume_name``, and in logical volume ``lv`` of an
    LVM2 physical volume there; Btrfs: in ``subvolume``).

    Returns the tree and the opened top-level source (an ``ImageReader`` or ``FileSource``); close the
    source when done.  Raises ``UsageError`` when a whole partitioned disk is given without ``partition``.
    """
    from ..partitions import partition_source

    if partition is not None and (offset is not None or length is not None):
        raise UsageError("--partition cannot be combined with --offset/--length")
    if volume_name is not None and (partition is not None or offset is not None or length is not None):
        raise UsageError("--volume cannot be combined with --partition or --offset/--length")
    source = _open_source(path, disk)
    try:
        volume: BlockSource = source
        if volume_name is not None:
            volume = named_volume(source, volume_name)
            _refuse_disk(volume, f"volume {volume_name}", "--volume NAME",  # a firmware RAID volume holds a disk
                         lambda parts: ", ".join(f"{volume_name}p{p.number}" for p in parts))
        elif partition is not None:
            table = read_partitions(source)
            if table.get(partition).dynamic:
                return open_tree(_dynamic_volume(source, table, partition, lv), subvolume), source
            check_table(source, table.get(partition).end)  # a firmware RAID member: its table is the array's
            volume = partition_source(source, partition, table)
        elif offset is not None or length is not None:
            start = offset or 0
            size = length if length is not None else source.size - start
            if start < 0 or size <= 0 or start + size > source.size:
                raise UsageError(f"--offset {start} --length {size} is outside {path} ({source.size} bytes)")
            volume = WindowSource(source, start, size)
        else:
            _refuse_disk(source, path, "--partition N",
                         lambda parts: "partitions: " + ", ".join(f"{p.number} ({p.type})" for p in parts))
        if lv is not None:
            from ..filesystems.lvm_source import open_lv

            volume = open_lv(volume, lv)
        return open_tree(volume, subvolume), source
    except BaseException:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        raise


def _refuse_disk(volume: BlockSource, what: str, option: str, listing: Callable[[list[Partition]], str]) -> None:
    """``UsageError`` when ``volume`` holds a partitioned disk rather than one filesystem, naming the option
    that picks a partition and (``listing``) the partitions."""
    parts = read_partitions(volume).partitions if detect(volume) is None else []
    if parts:
        raise UsageError(f"{what} holds a partitioned disk, not one filesystem: choose a partition with {option} "
                         f"({listing(parts)})")


def volume_pieces(top: BlockSource, volume: BlockSource) -> list[tuple[int, int, int]]:
    """``(volume offset, offset in top, length)`` of the pieces of ``volume`` (a partition or window, a
    logical or dynamic volume, an MD array inside a member, any of them nested) in the source ``top`` it is
    read from.  Raises ``UnsupportedError`` when the volume's bytes cannot be traced back to ``top``."""
    if volume is top:
        return [(0, 0, top.size)]
    base = getattr(volume, "base", None)
    if isinstance(volume, WindowSource):
        outer: list[tuple[int, int, int]] | None = [(0, volume.offset, volume.size)]
    elif isinstance(volume, MappedSource):
        outer = volume.pieces()
    else:
        outer = None
    if outer is None or base is None:
        raise UnsupportedError("the volume's bytes cannot be traced back to the image's (a finely striped "
                               "logical volume?), so its damaged ranges cannot be named")
    inner = volume_pieces(top, base)
    starts = [b for b, _, _ in inner]
    out: list[tuple[int, int, int]] = []
    for v, b, n in outer:  # each outer piece lies in base: split it where base's own pieces change
        i = max(0, bisect.bisect_right(starts, b) - 1)
        while n > 0 and i < len(inner):
            ib, it, il = inner[i]
            if b >= ib + il:
                i += 1
                continue
            take = min(n, ib + il - b)
            out.append((v, it + b - ib, take))
            v, b, n, i = v + take, b + take, n - take, i + 1
    return out


def _to_volume(pieces: list[tuple[int, int, int]], off: int, n: int) -> list[tuple[int, int]]:
    """Range ``[off, off + n)`` of the top source as ``(volume offset, length)`` pieces."""
    out = []
    for v, t, length in pieces:
        s, e = max(off, t), min(off + n, t + length)
        if s < e:
            out.append((v + s - t, e - s))
    return out


def volume_bad_ranges(source: BlockSource, tree: FileTree) -> list[tuple[int, int]]:
    """The source's unreadable ranges (``ImageReader.bad_ranges``) relative to the tree's volume."""
    bad: list[tuple[int, int]] = list(getattr(source, "bad_ranges", None) or [])
    if not bad:
        return []
    pieces = volume_pieces(source, tree.source)
    return sorted(r for off, n in bad for r in _to_volume(pieces, off, n))


def corrupt_ranges(source: BlockSource, tree: FileTree,
                   progress: ProgressCallback = no_progress) -> list[tuple[int, int, str]]:
    """Ranges of the tree's volume (``offset``, ``length``, why) held by image chunks that fail their
    checksums; empty when ``source`` is no image (a raw volume or device has no checksums)."""
    from ..image.reader import ImageReader
    from ..image.verify import corrupt_chunks

    if not isinstance(source, ImageReader):
        return []
    pieces = volume_pieces(source, tree.source)
    out = []
    for _, top, length in pieces:
        for index, why in corrupt_chunks(source, top, length, progress=progress):
            start = index * source.chunk_size
            s, e = max(start, top), min(start + source.chunk_len(index), top + length)
            out += [(v, n, why) for v, n in _to_volume(pieces, s, e - s)]
    return sorted(set(out))


def damaged_files(tree: FileTree, bad_ranges: list[tuple[int, int]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """Files (``path`` or ``path:stream``) whose data touches ``bad_ranges`` (volume-relative
    ``(offset, length)``), with the lost ``(file_offset, length)`` ranges of each."""
    bad = sorted((o, o + n) for o, n in bad_ranges if n > 0)
    if not bad:
        return []
    starts = [s for s, _ in bad]
    out: list[tuple[str, list[tuple[int, int]]]] = []
    for entry in tree.walk("/"):
        if entry.type not in ("file", "symlink", "reparse"):
            continue
        for stream in (None, *entry.streams):
            try:
                layout = tree.layout(entry.path, stream)
            except (CorruptImageError, NotFoundError):
                continue
            lost: list[tuple[int, int]] = []
            for foff, disk, n in layout.runs or []:
                if disk is not None:  # a hole loses nothing
                    lost += [(foff + s - disk, e - s) for s, e in _bad_in(bad, starts, disk, n)]
            for disk, n, foff, flen in layout.stored or []:  # compressed: a lost byte loses its whole unit
                if _bad_in(bad, starts, disk, n):
                    lost.append((foff, flen))
            if lost:
                out.append((entry.path + (f":{stream}" if stream else ""), _merge(lost)))
    return out


def _bad_in(bad: list[tuple[int, int]], starts: list[int], disk: int, n: int) -> list[tuple[int, int]]:
    """The parts ``(start, end)`` of the sorted ``bad`` ranges inside ``[disk, disk + n)``."""
    out = []
    i = max(0, bisect.bisect_right(starts, disk) - 1)
    while i < len(bad) and bad[i][0] < disk + n:
        s, e = max(bad[i][0], disk), min(bad[i][1], disk + n)
        if s < e:
            out.append((s, e))
        i += 1
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= o:
            po, pn = out[-1]
            out[-1] = (po, max(pn, o + n - po))
        else:
            out.append((o, n))
    return out


def _dynamic_volume(source: BlockSource, table: PartitionTable, partition: int, lv: str | None) -> BlockSource:
    """Volume ``lv`` of the Windows dynamic disk whose partition ``partition`` was chosen; without ``lv``, a
    ``UsageError`` naming the volumes there."""
    from ..partitions.ldm import read_ldm
    from ..partitions.ldm_source import find_volume

    try:
        if lv is not None:
            return find_volume(source, table, lv)
        db = read_ldm(source, table)
    except UnsupportedError as e:
        raise UnsupportedError(f"partition {partition} is a Windows dynamic disk (LDM) partition: {e}") from None
    if db is None or not db.volumes:
        raise UnsupportedError(f"partition {partition} is {DYNAMIC_WHY}")
    listing = ", ".join(f"{db.group}/{v.name} ({v.kind}" + (", not readable from this disk" if v.why_not else "")
                        + ")" for v in db.volumes)
    raise UsageError(f"partition {partition} is a Windows dynamic disk (LDM) partition: choose a volume with "
                     f"--lv NAME ({listing})")

