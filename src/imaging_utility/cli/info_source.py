"""``info SOURCE``: what a disk, a partition or a raw volume file holds, before it is imaged.

The same map ``image --used-only`` would build (``ops.diskmap.plan_disk``: the partition table, each
partition's filesystem and used bytes, what is kept in full and why, LVM2 logical volumes), what it would
read, and whether the source is mounted.  Nothing is written; reading is what ``image`` reads first.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from ..blocks import BlockSource
from ..devices.mounts import mount_state
from ..devices.source import FileSource
from ..errors import Error, RefusedError
from ..format import c_image as c
from ..format.metaframe import starts_like_image
from ..ops.diskmap import fs_meta, partition_table_of, plan_disk
from ._disk_view import disk_lines, rows_from_meta, rows_from_table, select_rows, table_info, volume_lines
from .output import human_bytes, print_json, shown, stdout, warn

_LATER_PART = re.compile(r"\.(\d{3,})$")  # a split image's .002, .003 …: not the start of anything


def is_raw_source(path: str) -> bool:
    """A block device, or a regular file that neither begins nor ends like an image (a raw disk or volume
    file; an image whose first bytes are damaged still ends with its seek table, and is left to the image
    reader to report)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if stat.S_ISBLK(st.st_mode):
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size < 8:
        return False
    later = _LATER_PART.search(path)
    if later and int(later.group(1)) > 1:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if starts_like_image(head):
                return False
            f.seek(-4, os.SEEK_END)
            try:
                tail = f.read(4)
            except OSError:
                return True  # a raw file on failing media, its last sectors unreadable: still what image reads
    except OSError:
        return False  # the image reader says why it cannot be read
    return int.from_bytes(tail, "little") != c.SEEKABLE_FOOTER_MAGIC


def describe_source(path: str, source: BlockSource, is_device: bool) -> dict[str, Any]:
    table = partition_table_of(source)
    info: dict[str, Any] = {"source": path, "image": False, "kind": "block-device" if is_device else "file",
                            "size": source.size, "sector_size": source.sector_size}
    try:
        plan = plan_disk(source, table, tolerate_read_errors=True)
    except RefusedError as e:  # a table that cannot be trusted: shown as it is, used-only would refuse
        assert table is not None
        info["disk"] = {"table": table_info(table, source.size), "partitions": rows_from_table(source, table),
                        "volume": None, "warnings": [str(e)]}
        info["used_only_bytes"] = None
    else:
        volume = None
        if plan.volume is not None:
            volume = {**fs_meta(plan.volume), "used": plan.allocation.used_bytes,
                      "volumes": [vars(v) for v in plan.volume.volumes]}
        meta = plan.meta()
        rows = rows_from_meta(meta)
        for row, part in zip(rows, plan.partitions, strict=True):  # an LVM2 PV: its LVs; an MD member: its array
            row["volumes"] = [vars(v) for v in part.filesystem.volumes] if part.filesystem is not None else []
            if row["filesystem"] is None and part.found:  # found but not mapped: the warning says why
                row["filesystem"] = f"{part.found} (not mapped)"
        if table is not None:  # the table's own sector size: a copy of a 4Kn disk in a file counts 4096
            meta["table"]["sector_size"] = table.sector_size
        info["disk"] = {"table": meta["table"] if table is not None else None, "partitions": rows,
                        "volume": volume,
                        "warnings": [w for w in plan.warnings if not w.startswith("no partition table")]}
        info["used_only_bytes"] = plan.allocation.used_bytes
        if plan.whole is not None and plan.volume is None:  # why nothing is known there (a PV in no VG …)
            info["disk"]["note"], info["disk"]["found"] = plan.whole.reason, plan.whole.found
    try:
        state = mount_state(path)
        info["mounts"] = [{"what": m.describe(), "read_only": m.read_only} for m in state.mounts]
    except (Error, OSError):
        info["mounts"] = []
    return info


def run(path: str, as_json: bool, partition: int | None) -> int:
    with FileSource(path) as source:
        info = describe_source(path, source, source.is_block_device)
    if as_json:
        print_json(info)
        return 0
    disk = info["disk"]
    rows = select_rows(disk["partitions"], partition, "the source's")
    size = info["size"]
    kind = "block device" if info["kind"] == "block-device" else "file"
    _say(f"source       {path}: {kind}, {human_bytes(size)} ({size} bytes), sector {info['sector_size']} "
         "(not an image: what 'image' would read from it)")
    for line in disk_lines(disk, rows, info["sector_size"]):
        _say(line)
    for row in rows:
        if row.get("volumes"):
            what = {"md": "Linux MD RAID member", "ldm": "Windows dynamic disk (LDM) data"}.get(
                row["filesystem"], "LVM2 physical volume")
            _say(f"  partition {row['number']}: {what}")
            for line in volume_lines(row["volumes"]):
                _say("  " + line)
    if disk["volume"]:
        for line in volume_lines(disk["volume"]["volumes"]):  # an LVM2 physical volume: each logical volume
            _say(line)
    elif not disk["table"]:
        why = f": {disk['note']}" if disk.get("note") else ""
        found = f"{disk['found']}, not mapped" if disk.get("found") else "none known, no partition table"
        _say(f"filesystem   {found}{why}; 'image --used-only' would refuse it")
    used = info["used_only_bytes"]
    if used is not None and (disk["table"] or disk["volume"]):
        _say(f"used-only    'image --used-only' reads {human_bytes(used)} of {human_bytes(size)} "
             f"({used / max(1, size) * 100:.1f}%)")
    for m in info["mounts"]:
        _say(f"mounted      {m['what']}" + ("" if m["read_only"] else
                                             ": 'image' refuses it until it is unmounted or read-only"))
    for message in disk["warnings"]:
        warn(message)
    return 0


def _say(text: str) -> None:
    stdout.print(shown(text), markup=False)
