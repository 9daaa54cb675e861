"""Filesystem detection and allocation maps for used-only imaging.

``detect`` recognises NTFS, ext2/3/4, FAT12/16/32, exFAT, XFS, Btrfs, Linux swap, LVM2
physical volumes at offset 0 of a ``BlockSource`` and Linux MD RAID members (``md.py``);
``allocation_map`` returns the byte ranges in use as the project's ``AllocationMap``.  The map always
includes the filesystem's own metadata and everything past the filesystem's end up to the source's end.
When the filesystem is unknown, damaged or in a state whose bitmaps cannot be
trusted, ``UnsupportedError`` says what was found: never a partial or wrong map.

Formats and their specs: ``ntfs.py``, ``ext.py``, ``fat.py``, ``exfat.py``, ``xfs.py``,
``btrfs.py``, ``lvm.py``; summaries in ``shared/reference/ntfs-bitmap-and-extfs.md`` and
``xfs-btrfs-lvm.md``.  An LVM2 physical volume's map is each logical volume's own map carried
through its segments (``lvm_map.py``), an MD RAID-1 member's is its array's filesystem map carried through
its data area; ``FilesystemInfo.volumes`` says what was done with each.  The parsers are
our own over ``struct`` (dissect.* is used only by tests), so every read goes
through ``BlockSource.readinto_at`` and memory stays bounded.  Functions here
are thread-safe if the source is.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..blocks import BlockSource, WindowSource
from ..errors import Error, UnsupportedError
from ..extents import AllocationMap
from . import btrfs, btrfs_map, exfat, ext, fat, lvm, lvm_map, md, ntfs, signatures, swap, xfs
from .lvm_map import VolumeInfo

__all__ = ["FilesystemInfo", "VolumeInfo", "allocation_map", "detect"]

_HINT = "image it in full without --used-only"


@dataclass(frozen=True)
class FilesystemInfo:
    type: str  # "ntfs", "ext2", "ext3", "ext4", "fat12", "fat16", "fat32", "exfat", "xfs", "btrfs", "lvm2", "swap",
    # "md" (a Linux MD RAID member)
    cluster_size: int  # bytes per cluster/block
    volume_size: int  # bytes the filesystem spans (may be < source size)
    label: str | None
    serial: str | None  # volume serial / UUID as text
    volumes: tuple[VolumeInfo, ...] = ()  # lvm2: each logical volume, its filesystem and used bytes; md: the array
    warnings: tuple[str, ...] = ()  # one line each: what the map had to keep whole, and why


_Found = (ntfs.NtfsBoot | exfat.ExfatBoot | ext.ExtSuper | fat.FatBoot | xfs.XfsSuper | btrfs.BtrfsSuper | lvm.PvLabel
          | swap.SwapHeader | md.MdSuper)
_PROBES = (ntfs.probe, exfat.probe, ext.probe, fat.probe, xfs.probe, btrfs.probe, swap.probe)
_ALL = frozenset({"lvm", "md"})  # the containers followed at the top level
_IN = {"md": frozenset({"lvm"}), "lvm": frozenset()}  # ... and inside each: an LVM2 PV on an MD RAID-1 array


def _probe(source: BlockSource, containers: frozenset[str] = _ALL) -> _Found | None:
    """``containers``: which of an LVM2 PV label and an MD superblock are followed here (none inside a
    logical volume, no MD superblock inside an MD array)."""
    if "md" in containers:
        member = md.probe(source)  # 0.90 and 1.0 at the end come before the array's filesystem at byte 0
        if member is not None and member.version in ("0.90", "1.0"):
            return member
    else:
        member = None
    found: list[_Found] = [] if member is None else [member]
    errors: list[UnsupportedError] = []
    for probe in (*_PROBES, lvm.probe) if "lvm" in containers else _PROBES:
        try:
            hit = probe(source)
        except UnsupportedError as e:
            errors.append(e)
            continue
        if hit is not None:
            found.append(hit)
    if len(found) > 1:
        names = " and ".join(_info(source, f).type for f in found)
        raise UnsupportedError(f"both {names} signatures found at offset 0, cannot tell which is real; {_HINT}")
    if found:
        return found[0]
    if errors:
        raise UnsupportedError(f"{errors[0]}; {_HINT}")
    return None


def _info(source: BlockSource, fs: _Found) -> FilesystemInfo:
    if isinstance(fs, ntfs.NtfsBoot):
        return FilesystemInfo("ntfs", fs.cluster_size, fs.volume_size, ntfs.volume_label(source, fs),
                              f"{fs.serial:016X}")
    if isinstance(fs, exfat.ExfatBoot):
        return FilesystemInfo("exfat", fs.cluster_size, fs.volume_size, exfat.volume_label(source, fs),
                              fs.serial_text)
    if isinstance(fs, ext.ExtSuper):
        return FilesystemInfo(fs.kind, fs.block_size * fs.cluster_ratio, fs.blocks_count * fs.block_size, fs.label,
                              fs.serial)
    if isinstance(fs, swap.SwapHeader):
        return FilesystemInfo("swap", fs.page_size, fs.volume_size, fs.label, fs.uuid)
    if isinstance(fs, xfs.XfsSuper):
        return FilesystemInfo("xfs", fs.blocksize, fs.volume_size, fs.label, fs.serial)
    if isinstance(fs, btrfs.BtrfsSuper):
        return FilesystemInfo("btrfs", fs.sectorsize, fs.dev_total_bytes, fs.label, fs.serial)
    if isinstance(fs, md.MdSuper):
        return FilesystemInfo("md", 512, source.size, fs.name, fs.serial)
    if isinstance(fs, lvm.PvLabel):
        try:
            vg: str | None = lvm.read_vg(source, fs).name
        except UnsupportedError:
            vg = None  # allocation_map says what is wrong
        return FilesystemInfo("lvm2", 512, fs.device_size or source.size, vg, fs.serial)
    return FilesystemInfo(fs.type, fs.cluster_size, fs.volume_size, fs.label, fs.serial_text)


@contextlib.contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Structures that passed validation but still point somewhere impossible: ``UnsupportedError``.

    Our own errors (including I/O errors and a corrupt image under the source) pass through.
    """
    try:
        yield
    except Error:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error) as e:
        raise UnsupportedError(f"{what} at offset 0 is inconsistent: {e}; {_HINT}") from None


def detect(source: BlockSource) -> FilesystemInfo | None:
    """The filesystem at offset 0 of ``source``, or ``None`` when no known signature is there.

    Raises ``UnsupportedError`` when a signature is found but its boot sector or
    superblock is damaged, or when two filesystems' signatures are both present.
    """
    with _parsing("the filesystem"):
        fs = _probe(source)
        return None if fs is None else _info(source, fs)


def _ranges(source: BlockSource, fs: _Found, warnings: list[str]) -> Iterator[tuple[int, int]]:
    if isinstance(fs, ntfs.NtfsBoot):
        return ntfs.used_ranges(source, fs)
    if isinstance(fs, exfat.ExfatBoot):
        return exfat.used_ranges(source, fs)
    if isinstance(fs, ext.ExtSuper):
        return ext.used_ranges(source, fs, warnings)
    if isinstance(fs, xfs.XfsSuper):
        return xfs.used_ranges(source, fs)
    if isinstance(fs, btrfs.BtrfsSuper):
        return btrfs_map.used_ranges(source, fs)
    if isinstance(fs, swap.SwapHeader):
        return swap.used_ranges(source, fs)
    if isinstance(fs, fat.FatBoot):
        return fat.used_ranges(source, fs)
    raise TypeError(f"no allocation map for {type(fs).__name__}")


def _clusters_end(fs: _Found) -> int | None:
    """Where the volume's allocatable clusters end; only fixed structures (a backup boot sector,
    sectors too few for a whole cluster) lie between it and the volume's end.  ``None``: not known,
    a source shorter than the volume is refused."""
    if isinstance(fs, ntfs.NtfsBoot):
        return fs.total_clusters * fs.cluster_size
    if isinstance(fs, exfat.ExfatBoot):
        return fs.heap_offset * fs.sector_size + fs.cluster_count * fs.cluster_size
    if isinstance(fs, ext.ExtSuper):
        return fs.blocks_count * fs.block_size
    if isinstance(fs, fat.FatBoot):
        return fs.data_offset + fs.cluster_count * fs.cluster_size
    return None


def _clip(info: FilesystemInfo, end: int, ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """A volume longer than its source: keep the ranges inside the source, or refuse when an
    allocated cluster lies past its end (dropping it would lose data)."""
    for off, n in ranges:
        if n > 0 and off + n > size and off < end:
            raise UnsupportedError(
                f"{info.type} filesystem spans {info.volume_size} bytes but the source ends at {size} "
                f"(truncated?), and its allocated clusters at offset {max(off, size)} lie past that end; {_HINT}")
    return [(off, min(n, size - off)) for off, n in ranges if off < size]


def allocation_map(source: BlockSource) -> tuple[FilesystemInfo, AllocationMap]:
    """Detect the filesystem and map the byte ranges it uses.

    The map's ``size`` is ``source.size``; everything from the filesystem's end
    (``FilesystemInfo.volume_size``) to the source's end counts as used.

    What the map had to keep whole (block groups whose metadata contradicts itself) or a volume
    longer than the source (a missing backup boot sector) is said in ``FilesystemInfo.warnings``.

    Raises:
        UnsupportedError: no known filesystem, a damaged one, one whose bitmaps cannot be
            trusted (journal needing recovery, errors recorded), or a source that ends before
            an allocated cluster.
        SourceIOError: reading the source failed.
    """
    return _allocation_map(source, _ALL)


def _allocation_map(source: BlockSource, containers: frozenset[str]) -> tuple[FilesystemInfo, AllocationMap]:
    """``allocation_map``; ``containers`` as for ``_probe``."""
    with _parsing("the filesystem"):
        fs = _probe(source, containers)
        if fs is None:
            raise UnsupportedError(
                f"no NTFS, ext2/3/4, FAT or exFAT filesystem found at offset 0, nor XFS, Btrfs"
                f"{' or an LVM2 physical volume' if 'lvm' in containers else ''} ({signatures.describe(source)}); "
                f"{_HINT}"
            )
        info = _info(source, fs)
        raid = signatures.firmware_raid(source) if containers == _ALL else None
    if raid is not None:  # the filesystem at byte 0 is the array's: on a striped set, not this disk's
        raise UnsupportedError(f"{raid}: its {info.type} filesystem is the array's; image the assembled array; "
                               f"{_HINT}")
    end = _clusters_end(fs)
    if info.volume_size > source.size and end is None:
        raise UnsupportedError(
            f"{info.type} filesystem spans {info.volume_size} bytes but the source ends at {source.size} "
            f"(truncated?); {_HINT}"
        )
    if isinstance(fs, md.MdSuper):
        return _md_map(source, fs, info, _IN["md"] & containers)
    warnings: list[str] = []

    def inner_map(inner: BlockSource) -> tuple[str, AllocationMap]:
        inner_info, amap = _allocation_map(inner, _IN["lvm"] & containers)
        warnings.extend(inner_info.warnings)
        return inner_info.type, amap

    with _parsing(f"the {info.type} filesystem"):
        if isinstance(fs, lvm.PvLabel):
            vg, ranges, volumes = lvm_map.pv_used(source, fs, inner_map)
            info = replace(info, label=vg.name, volumes=tuple(volumes))
        else:
            ranges = list(_ranges(source, fs, warnings))
    if info.volume_size > source.size:
        assert end is not None
        ranges = _clip(info, end, ranges, source.size)
        warnings.append(f"{info.type} filesystem spans {info.volume_size} bytes but the source ends "
                        f"{info.volume_size - source.size} bytes earlier, at {source.size}; every allocated "
                        "cluster lies inside the source, so it is imaged as it is")
    else:
        ranges.append((info.volume_size, source.size - info.volume_size))
    amap = AllocationMap(ranges, size=source.size, cluster_size=info.cluster_size)
    return replace(info, warnings=tuple(warnings)), amap


def _md_map(source: BlockSource, member: md.MdSuper, info: FilesystemInfo,
            containers: frozenset[str]) -> tuple[FilesystemInfo, AllocationMap]:
    """An MD RAID-1 member: its array's map through the data area, the rest kept; other levels refused.
    ``volumes``: the array, then the logical volumes of an LVM2 PV on it."""
    why = member.unmappable()
    if why is not None:
        raise UnsupportedError(f"{why}; {_HINT}")
    begin, length = member.data_offset, member.data_size
    name = f"md/{member.name or member.serial}"
    try:
        inner, amap = _allocation_map(WindowSource(source, begin, length), containers)
    except UnsupportedError as e:
        return (replace(info, volumes=(VolumeInfo(name, length, None, length, f"kept in full: {_reason(e)}"),)),
                AllocationMap.full(source.size))
    carried = [(begin + e.offset, e.length) for e in amap]
    volume = VolumeInfo(name, length, inner.type, sum(n for _, n in carried))
    ranges = [(0, begin), *carried, (begin + length, source.size - begin - length)]
    return (replace(info, volumes=(volume, *inner.volumes), warnings=inner.warnings),
            AllocationMap(ranges, size=source.size, cluster_size=512))


def _reason(e: UnsupportedError) -> str:
    return str(e).split(f"; {_HINT}")[0]
