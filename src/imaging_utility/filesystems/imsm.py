"""Intel Matrix Storage / Rapid Storage Technology (IMSM) firmware RAID metadata at the end of a member disk.

The metadata block (MPB) starts at the second-to-last sector with ``Intel Raid ISM Cfg Sig. ``; when it is
longer than a sector, the rest lies in the sectors before it.  Layout from mdadm's ``super-intel.c``
(``struct imsm_super``, ``imsm_disk``, ``imsm_dev``, ``imsm_vol``, ``imsm_map``; little-endian): the disk
table, then one device record per volume, each with its map (two while a volume migrates).  The checksum is
the 32-bit sum of the MPB's words less the checksum field.

A RAID-1 volume of two disks, not migrating, neither uninitialized nor failed, holds the whole volume on
each member at ``pba_of_lba0``: its partition table and filesystems map the member's bytes there
(``ImsmVolume.why_not`` is None).  Every other volume (RAID-0, RAID-5, RAID-10, a migration under way) holds
pieces of the array on this disk.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..blocks import BlockSource, WindowSource
from ..errors import UnsupportedError
from .md import read_tail
from .signatures import firmware_raid, raid_sector_sizes

SIGNATURE = b"Intel Raid ISM Cfg Sig. "
SUPER = struct.Struct("<32sIIIIIIBBBB")  # signature, checksum, mpb_size, family, generation, …, disks, volumes
DISK_SIZE = 48
DISK_TABLE = 0xD8
DEV_HEAD = 16 + 4 * 4 + 48  # volume name, size low/high, status, reserved blocks, the rest of imsm_dev
DEV = struct.Struct("<16sII")
VOL_HEAD = 8 + 4 + 4 + 4 + 12  # migration unit, checkpoint, migr_state/type/dirty/fs_state, errors, unit hi, filler
VOL = struct.Struct("<IIBBBB")
MAP = struct.Struct("<IIIHBBBBBBIII")  # pba lo, blocks per member lo, stripes lo, strip, state, level, members, …
MAP_HEAD = 48  # imsm_map without its disk_ord_tbl
MAX_MPB = 128 * 1024  # mdadm reads at most MPB_SECTOR_CNT (2210) sectors; 128 KiB holds any real set
STATES = {0: "normal", 1: "uninitialized", 2: "degraded", 3: "failed"}

__all__ = ["ImsmSet", "ImsmVolume", "check_table", "raid1_volumes", "read_imsm"]


@dataclass(frozen=True)
class ImsmVolume:
    name: str
    level: int  # 0, 1, 5, 10
    members: int
    offset: int  # bytes from the start of each member (pba_of_lba0)
    size: int  # the volume's bytes
    member_bytes: int  # bytes of each member it holds (from ``offset``)
    state: str
    why_not: str | None  # why this member's bytes there are not the whole volume; None: they are


@dataclass(frozen=True)
class ImsmSet:
    version: str
    volumes: tuple[ImsmVolume, ...]


def _fail(why: str) -> UnsupportedError:
    return UnsupportedError(f"a member of an Intel Matrix Storage / RST firmware RAID set whose metadata is "
                            f"damaged or not one this program reads: {why}")


def read_imsm(source: BlockSource) -> ImsmSet | None:
    """The IMSM metadata at the end of the disk in ``source``; None when there is none.  Raises
    ``UnsupportedError`` for metadata that is there but damaged (checksum, sizes, counts)."""
    for ss in raid_sector_sizes(source) if source.size >= 4 * 4096 else ():
        anchor_at = source.size - 2 * ss  # values count sectors of the disk's own size (mdadm's convert_from_4k)
        anchor = read_tail(source, anchor_at, ss)
        if anchor.startswith(SIGNATURE):
            break
    else:
        return None
    sig, checksum, mpb_size, *_rest, n_disks, n_vols, _pos, _fill = SUPER.unpack_from(anchor)
    version = sig[len(SIGNATURE) :].split(b"\0", 1)[0].decode("ascii", "replace")
    if not SUPER.size <= mpb_size <= min(MAX_MPB, anchor_at) or mpb_size % 4:
        raise _fail(f"its metadata claims {mpb_size} bytes")
    extra = -(-mpb_size // ss) - 1
    mpb = anchor + (read_tail(source, anchor_at - extra * ss, extra * ss) if extra else b"")
    mpb = mpb[:mpb_size]
    words = struct.unpack_from(f"<{mpb_size // 4}I", mpb)
    if (sum(words) - checksum) & 0xFFFFFFFF != checksum:
        raise _fail("its checksum is wrong")
    at = DISK_TABLE + n_disks * DISK_SIZE
    volumes: list[ImsmVolume] = []
    for _ in range(n_vols):
        if at + DEV_HEAD + VOL_HEAD + MAP_HEAD > mpb_size:
            raise _fail(f"{n_vols} volumes do not fit its {mpb_size} bytes")
        name, size_lo, size_hi = DEV.unpack_from(mpb, at)
        _unit, _ckpt, migr_state, _mtype, _dirty, _fs = VOL.unpack_from(mpb, at + DEV_HEAD)
        maps_at = at + DEV_HEAD + VOL_HEAD
        (pba_lo, bpm_lo, _stripes, _strip, state, level, members, _domains, _failed, _ddf, pba_hi, bpm_hi,
         _stripes_hi) = MAP.unpack_from(mpb, maps_at)
        if not 0 < members <= n_disks:
            raise _fail(f"volume {_text(name)!r} has {members} members of {n_disks} disks")
        at = maps_at + (MAP_HEAD + 4 * members) * (2 if migr_state else 1)
        if at > mpb_size:
            raise _fail(f"volume {_text(name)!r} ends past its {mpb_size} bytes")
        offset, size = (pba_hi << 32 | pba_lo) * ss, (size_hi << 32 | size_lo) * ss
        if level == 1 and members == 4:
            level = 10  # older metadata writes RAID-10 as RAID-1 over four disks
        volumes.append(ImsmVolume(_text(name), level, members, offset, size, (bpm_hi << 32 | bpm_lo) * ss,
                                  STATES.get(state, str(state)),
                                  _why_not(level, members, migr_state, state, offset, size, anchor_at - extra * ss)))
    return ImsmSet(version, tuple(volumes))


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _why_not(level: int, members: int, migrating: int, state: int, offset: int, size: int, end: int) -> str | None:
    if level != 1 or members != 2:
        return f"a RAID-{level} volume of {members} disks: its data is spread over its disks"
    if migrating:
        return "a RAID-1 volume being rebuilt or migrated: this disk holds the volume only where the copy got"
    if state not in (0, 2):
        return f"a RAID-1 volume in state {STATES.get(state, state)}"
    if size <= 0 or offset + size > end:
        return f"a RAID-1 volume of {size} bytes at {offset} that does not fit before the metadata ({end})"
    return None


def raid1_volumes(source: BlockSource) -> dict[str, WindowSource]:
    """``{"imsm_NAME": volume}``: each RAID-1 volume held whole by the member in ``source``, named after the
    volume as mdadm names it under ``/dev/md/``; ``{}`` for a disk that is no IMSM member or whose metadata is
    damaged (whoever serves the disk's raw bytes still can)."""
    try:
        found = read_imsm(source)
    except UnsupportedError:
        return {}
    volumes: dict[str, WindowSource] = {}
    for i, v in enumerate(found.volumes if found is not None else ()):
        if v.why_not is None:
            volumes.setdefault("imsm_" + (re.sub(r"[^A-Za-z0-9._-]", "_", v.name) or str(i)),
                               WindowSource(source, v.offset, v.size))
    return volumes


def check_table(source: BlockSource, end: int) -> None:
    """Raise ``UnsupportedError`` unless the disk in ``source`` holds, up to ``end``, what the partition table at
    its start describes.  On a firmware RAID member that table is the first volume's: the member's own bytes
    only for an IMSM RAID-1 volume at the disk's start (the whole volume on each member) that reaches ``end``."""
    raid = firmware_raid(source)
    if raid is None:
        return
    found = read_imsm(source)
    first = next((v for v in found.volumes if v.offset == 0), None) if found is not None else None
    if first is None or first.why_not is not None or end > first.size:
        why = first.why_not if first is not None and first.why_not else "its partitions are the array's"
        raise UnsupportedError(f"{raid}: {why}; read the assembled array (/dev/md126) instead")
