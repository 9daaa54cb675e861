"""The types of the ``META`` JSON keys of the header and the trailer (docs/image-format.md §3.4).

A frame whose CRC is right but whose ``META`` holds a key of the wrong type (``level`` 99 or ``"x"``,
``source`` a list, ``digests`` a string) is a corrupt image: it is refused here, on load, with the
key's path in the message, instead of failing later as an internal error.  Keys this module does not
list are ignored (a later minor version may add them); a listed key may be missing unless marked
required, but when present it MUST have its type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import CorruptImageError

Check = Callable[[Any], bool]

HEX = re.compile(r"[0-9a-f]+")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DIGEST_HEX_LENGTH = {"sha256": 64, "blake3": 64, "md5": 32}
MIN_LEVEL, MAX_LEVEL = -131072, 22  # zstd's level range; this tool writes 1-22
COVERS_ALL = "all image bytes"
COVERS_ALLOCATED = "allocated bytes in volume order"


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    return lambda v: (type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi))


def _str(v: Any) -> bool:
    return type(v) is str


def _bool(v: Any) -> bool:
    return type(v) is bool


def _obj(v: Any) -> bool:
    return type(v) is dict


def _nullable(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def _str_map(v: Any) -> bool:
    return type(v) is dict and all(type(x) is str for x in v.values())


_SIZE = _int(0)

SOURCE: dict[str, Check] = {
    # every source
    "kind": _str, "path": _str, "size": _SIZE, "host": _str, "tool_version": _str,
    "command_line": _str_list, "created": _str,
    # a file
    "mtime": _str, "mtime_ns": _int(), "inode": _SIZE, "device_number": _SIZE,
    # a block device
    "device": _str, "name": _str, "major": _SIZE, "minor": _SIZE, "stable_names": _str_list,
    "wwn": _nullable(_str), "vendor": _nullable(_str), "model": _nullable(_str), "serial": _nullable(_str),
    "logical_sector_size": _int(1), "physical_sector_size": _nullable(_int(1)), "whole_disk": _bool,
    "parent": _nullable(_str), "partition_number": _nullable(_SIZE), "partition_start": _nullable(_SIZE),
    "partition_table": _nullable(_str_map), "backing_file": _nullable(_str), "udev": _str_map,
    # --offset/--length: the window of the source that was imaged
    "window_offset": _SIZE, "window_length": _int(1),
}
VOLUME: dict[str, Check] = {  # one logical volume of an LVM2 physical volume
    "name": _str, "size": _SIZE, "filesystem": _nullable(_str), "used_bytes": _SIZE, "note": _nullable(_str),
}


def _volumes(v: Any) -> bool:
    return type(v) is list and all(type(x) is dict and "name" in x and "size" in x and "used_bytes" in x
                                   and all(k not in x or c(x[k]) for k, c in VOLUME.items()) for x in v)


FILESYSTEM: dict[str, Check] = {
    "type": _str, "cluster_size": _int(1), "volume_size": _SIZE, "label": _nullable(_str),
    "serial": _nullable(_str), "volumes": _volumes,
}
def _list_of(check: Check) -> Check:
    return lambda v: type(v) is list and all(check(x) for x in v)


def _fits(table: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose listed keys have their types (others ignored), with the ``required`` ones present."""
    return lambda v: (type(v) is dict and all(k in v for k in required)
                      and all(k not in v or c(v[k]) for k, c in table.items()))


# a whole-disk image (docs/backup-sets.md §1): the partition table and what was stored of each partition
DISK_FS: dict[str, Check] = {
    "type": _str, "label": _nullable(_str), "uuid": _nullable(_str), "cluster_size": _nullable(_int(1)),
    "size": _nullable(_SIZE),
}
DISK_TABLE: dict[str, Check] = {
    "type": _nullable(_str), "disk_id": _nullable(_str), "first_usable_lba": _SIZE, "last_usable_lba": _SIZE,
    "entry_count": _SIZE, "entry_size": _SIZE, "primary_ok": _bool, "backup_ok": _bool,
    "extended": _nullable(_fits({"start": _SIZE, "length": _SIZE})), "ebrs": _list_of(_SIZE),
}
DISK_PARTITION: dict[str, Check] = {
    "number": _int(1), "start": _SIZE, "start_sector": _SIZE, "length": _SIZE, "sectors": _SIZE,
    "type_id": _str, "type": _str, "uuid": _nullable(_str), "name": _nullable(_str), "attributes": _str,
    "bootable": _nullable(_bool), "filesystem": _nullable(_fits(DISK_FS)), "used_bytes": _nullable(_SIZE),
    "kept": _str, "note": _nullable(_str),
}
DISK: dict[str, Check] = {
    "version": _int(1), "size": _SIZE, "sector_size": _int(1), "table": _nullable(_fits(DISK_TABLE)),
    "partitions": _list_of(_fits(DISK_PARTITION, ("number", "start", "length"))),
    "volume": _nullable(_fits(DISK_FS)), "used_bytes": _SIZE, "warnings": _str_list,
}
USED_ONLY: dict[str, Check] = {
    "filesystem": _obj, "used_bytes": _SIZE, "extents": _SIZE, "cluster_size": _int(1),
    "allocation_sha256": lambda v: type(v) is str and SHA256_HEX.fullmatch(v) is not None,
}
HEADER: dict[str, Check] = {
    "created": _str, "tool": _str, "zstd_library": _str, "level": _int(MIN_LEVEL, MAX_LEVEL),
    "digests": lambda v: _str_list(v) and len(set(v)) == len(v) and all(v),
    "split_size": _nullable(_int(1)), "hostname": _str, "command_line": _str_list, "source": _obj,
    "used_only": _obj, "disk": _obj,
}
STATS: dict[str, Check] = {"chunks": _SIZE, "zero_chunks_this_run": _SIZE, "read_bytes_this_run": _SIZE}
TRAILER: dict[str, Check] = {
    "finished": _str, "digests": _obj, "digest_covers": lambda v: v in (COVERS_ALL, COVERS_ALLOCATED),
    "stats": _obj, "partition_digests": lambda v: type(v) is dict and all(_str_map(x) for x in v.values()),
}


def _check(obj: dict[str, Any], table: dict[str, Check], what: str, where: str) -> None:
    for key, check in table.items():
        if key in obj and not check(obj[key]):
            raise CorruptImageError(f"{what}: META key {where}{key} has a wrong type or value: {_show(obj[key])}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_header_meta(meta: dict[str, Any], used_only: bool, what: str = "image header") -> None:
    """Raise ``CorruptImageError`` unless ``meta`` fits §3.4 (``used_only``: the header flag)."""
    _check(meta, HEADER, what, "")
    if "digests" not in meta:
        raise CorruptImageError(f"{what}: META has no 'digests' list")
    _check(meta.get("source") or {}, SOURCE, what, "source.")
    uo = meta.get("used_only")
    if used_only != (uo is not None):
        raise CorruptImageError(f"{what}: the used-only flag is {'set' if used_only else 'clear'} but META "
                                f"{'lacks' if used_only else 'has'} a 'used_only' object")
    if uo is not None:
        _check(uo, USED_ONLY, what, "used_only.")
        if "allocation_sha256" not in uo:
            raise CorruptImageError(f"{what}: META used_only has no allocation_sha256")
        _check(uo.get("filesystem") or {}, FILESYSTEM, what, "used_only.filesystem.")
    if "disk" in meta:
        _check(meta["disk"], DISK, what, "disk.")


def check_trailer_meta(meta: dict[str, Any], what: str = "image trailer") -> None:
    """Raise ``CorruptImageError`` unless ``meta`` fits §3.4 (the digests' names are checked against the
    header's by ``check_digests_agree``)."""
    _check(meta, TRAILER, what, "")
    digests = meta.get("digests")
    if digests is None:
        raise CorruptImageError(f"{what}: META has no 'digests' object")
    _check_hex(digests, what, "digest")
    for number, per_partition in (meta.get("partition_digests") or {}).items():
        _check_hex(per_partition, what, f"partition {number} digest")
    _check(meta.get("stats") or {}, STATS, what, "stats.")


def _check_hex(digests: dict[str, Any], what: str, kind: str) -> None:
    for name, value in digests.items():
        length = DIGEST_HEX_LENGTH.get(name)
        if type(value) is not str or not HEX.fullmatch(value) or (length is not None and len(value) != length):
            raise CorruptImageError(f"{what}: META {kind} {name!r} is not a lower-case hex digest: {_show(value)}")


def check_digests_agree(header_meta: dict[str, Any], trailer_meta: dict[str, Any], used_only: bool) -> None:
    """The trailer holds a digest for exactly the names the header lists, and covers what the image is."""
    listed, stored = header_meta.get("digests", []), trailer_meta.get("digests", {})
    missing = [n for n in listed if n not in stored]
    extra = [n for n in stored if n not in listed]
    if missing or extra:
        raise CorruptImageError(
            "image trailer: its digests disagree with the header's list "
            f"({'missing ' + ', '.join(missing) if missing else 'unlisted ' + ', '.join(extra)})"
        )
    covers = trailer_meta.get("digest_covers")
    if covers is not None and covers != (COVERS_ALLOCATED if used_only else COVERS_ALL):
        raise CorruptImageError(f"image trailer: digest_covers {covers!r} does not fit a "
                                f"{'used-only' if used_only else 'full'} image")
