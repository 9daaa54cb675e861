"""``info IMAGE|SETDIR``: metadata, layout, partition table, digests and bad ranges of an image or a set."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import Error, IncompleteImageError
from ._source_args import add_set_options, open_reader
from .output import human_bytes, print_json, shown, stdout, warn

if TYPE_CHECKING:  # the rest is imported when the command runs (every command module loads at start-up)
    from ..image.reader import ImageReader

EXAMPLES = """
examples:
  imaging-utility info sdb.img.zst
  imaging-utility info --json sdb.img.zst.001 | jq .digests
  imaging-utility info /backups/2024-06-01                     # a backup set: every disk and its partitions
  imaging-utility info --set-dir /backups/2024-06-01 --disk sda --partition 2
  imaging-utility info s3://backups/host1/sdb.img.zst
  imaging-utility info s3://backups/                  # every image, set and unfinished upload under a prefix
  imaging-utility info /dev/sdb                       # a disk (or partition, or raw file) before imaging it
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("info", parents=[parent], help="show an image's metadata, layout and digests",
                       description="Show an image's (or a backup set's) metadata, layout, partition table, "
                       "digests and bad ranges; on a disk, partition or raw volume file, its partitions, "
                       "filesystems and used bytes, and what 'image --used-only' would read.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE",
                   help="image, split set, backup set directory, or s3://bucket/prefix/ to list what is there")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_set_options(p, partition=True)
    return ["info"]


def format_version(major: int, minor: int) -> str:
    """``"1.0"``; pre-release images numbered their 1.0 frames 2.0 (spec §10)."""
    from ..format import c_image as c

    return "1.0" if (major, minor) == c.PRERELEASE_VERSION else f"{major}.{minor}"


def _disk(reader: ImageReader) -> dict[str, Any]:
    """The partition table (from the header's ``disk`` section, else read from the image) or the volume."""
    from ..filesystems import allocation_map, detect
    from ..partitions import read_partitions
    from ._disk_view import rows_from_meta, rows_from_table, table_info

    meta = reader.header.meta.get("disk")
    try:
        table = read_partitions(reader)
    except Error:
        table = None
    warnings = list(table.warnings) if table is not None else []
    if isinstance(meta, dict):
        volume = meta.get("volume")
        if isinstance(volume, dict):
            volume = {**volume, "used": meta.get("used_bytes")}
        return {"table": meta.get("table"), "partitions": rows_from_meta(meta), "volume": volume,
                "warnings": list(dict.fromkeys([*meta.get("warnings", []), *warnings]))}
    if table is not None and table.scheme:
        return {"table": table_info(table, reader.size), "partitions": rows_from_table(reader, table),
                "volume": None, "warnings": warnings}
    volume = None
    try:
        fs = detect(reader)
        if fs is not None:
            uo = reader.header.meta.get("used_only") or {}
            used = uo.get("used_bytes") if reader.allocation is not None else allocation_map(reader)[1].used_bytes
            volume = {"type": fs.type, "label": fs.label, "uuid": fs.serial, "size": fs.volume_size, "used": used}
    except (Error, ValueError):
        pass
    return {"table": None, "partitions": [], "volume": volume, "warnings": warnings}


def describe(reader: ImageReader) -> dict[str, Any]:
    from ..extents import ExtentKind

    kinds: dict[str, int] = {k.value: 0 for k in ExtentKind}
    for ext in reader.chunk_map():
        kinds[ext.kind.value] += ext.length
    h, t = reader.header, reader.trailer
    info: dict[str, Any] = {
        "image": reader.paths,
        "format_version": format_version(h.version_major, h.version_minor),
        "image_bytes": reader.image_bytes,
        "source_size": reader.size,
        "sector_size": h.sector_size,
        "chunk_size": h.chunk_size,
        "chunk_count": reader.chunk_count,
        "ratio": round(reader.image_bytes / reader.size, 4) if reader.size else None,
        "level": h.meta.get("level"),
        "created": h.meta.get("created"),
        "finished": t.meta.get("finished"),
        "tool": h.meta.get("tool"),
        "hostname": h.meta.get("hostname"),
        "command_line": h.meta.get("command_line"),
        "source": h.meta.get("source", {}),
        "digests": t.meta.get("digests", {}),
        "partition_digests": t.meta.get("partition_digests", {}),
        "layout_bytes": kinds,
        "used_only": h.meta.get("used_only"),
        "disk": _disk(reader),
        "bad_ranges": [{"offset": o, "length": n} for o, n in reader.bad_ranges],
    }
    return info


def source_lines(src: dict[str, Any]) -> list[str]:
    """The header's source identity as a few readable lines (``--json`` has every field)."""
    if not src:
        return []
    size = f"{human_bytes(src['size'])} ({src['size']} bytes)" if isinstance(src.get("size"), int) else "? bytes"
    if src.get("kind") == "block-device":
        what = "partition" if src.get("partition_number") else "disk"
        lines = [f"{what} {shown(str(src.get('path')))}"
                 + (f" -> {shown(str(src['device']))}" if src.get("device") not in (None, src.get("path")) else "")
                 + f", {size}, sectors {src.get('logical_sector_size')}/{src.get('physical_sector_size')}"]
        hw = [f"{k} {shown(str(src[k]))}" for k in ("vendor", "model", "serial", "wwn") if src.get(k)]
        if hw:
            lines.append(", ".join(hw))
        if src.get("partition_number"):
            lines.append(f"partition {src['partition_number']} of {src.get('parent')} at byte "
                         f"{src.get('partition_start')}")
        table = src.get("partition_table")
        if isinstance(table, dict):
            lines.append(f"partition table {table.get('type')} {table.get('id')}")
        if src.get("backing_file"):
            lines.append(f"loop device backed by {shown(str(src['backing_file']))}")
        lines += [f"also {shown(n)}" for n in (src.get("stable_names") or [])[:3]]
    else:
        lines = [f"file {shown(str(src.get('path')))}, {size}, modified {src.get('mtime')}"]
    if src.get("window_length"):
        lines.append(f"window of {src['window_length']} bytes at byte {src.get('window_offset')}")
    return lines


def _say(text: str) -> None:
    """A line of the report: text from the image (names, paths, host names) is escaped, never markup."""
    stdout.print(shown(text), markup=False)


def _print(info: dict[str, Any], partition: int | None) -> None:
    from ._disk_view import disk_lines, select_rows, volume_lines

    parts = info["image"]
    _say(f"image        {parts[0]}" + (f" (+{len(parts) - 1} parts)" if len(parts) > 1 else ""))
    _say(f"format       imaging-utility image format {info['format_version']} (seekable zstd, level {info['level']})")
    ratio = f" ({info['ratio'] * 100:.1f}%)" if info["ratio"] is not None else ""
    _say(f"source size  {human_bytes(info['source_size'])} ({info['source_size']} bytes)")
    _say(f"image size   {human_bytes(info['image_bytes'])}{ratio}")
    _say(f"chunks       {info['chunk_count']} × {human_bytes(info['chunk_size'])}, "
         f"sector size {info['sector_size']}")
    lay = info["layout_bytes"]
    _say("layout       " + ", ".join(f"{k} {human_bytes(v)}" for k, v in lay.items() if v))
    _say(f"created      {info['created']} on {shown(str(info['hostname']))} by {info['tool']}")
    _say(f"finished     {info['finished']}")
    for i, line in enumerate(source_lines(info["source"])):
        _say(("source       " if i == 0 else "             ") + line)
    uo = info["used_only"]
    if uo:
        fs = uo.get("filesystem", {})
        used = uo.get("used_bytes", 0)
        _say(f"used-only    {fs.get('type', '?')}, cluster {uo.get('cluster_size')} bytes, "
             f"used {human_bytes(used)} of {human_bytes(info['source_size'])} "
             f"({used / max(1, info['source_size']) * 100:.1f}%)")
        for line in volume_lines(fs.get("volumes") or []):  # an LVM2 physical volume: each logical volume
            _say(line)
    disk = info["disk"]
    rows = select_rows(disk["partitions"], partition, "the image's")
    for line in disk_lines(disk, rows, info["sector_size"]):
        _say(line)
    for message in disk["warnings"]:
        warn(message)
    for name, digest in info["digests"].items():
        _say(f"{name:<12} {digest}")
    for number, digests in info["partition_digests"].items():
        if partition is None or number == str(partition):
            _say(f"partition {number:<3}" + ", ".join(f"{n} {d}" for n, d in digests.items()))
    if info["bad_ranges"]:
        total = sum(r["length"] for r in info["bad_ranges"])
        _say(f"bad ranges   {len(info['bad_ranges'])} ({human_bytes(total)} unreadable, zero-filled):")
        for r in info["bad_ranges"]:
            _say(f"  offset {r['offset']} length {r['length']} (sector {r['offset'] // info['sector_size']})")


def _run_set(args: argparse.Namespace) -> int:
    from ..ops.manifest import MANIFEST, load_manifest, open_set_image

    manifest = load_manifest(args.image)
    names = [args.disk] if args.disk else [d["name"] for d in manifest["disks"]]
    infos = []
    for name in names:
        with open_set_image(args.image, name) as reader:
            infos.append((name, describe(reader)))
    if args.json:
        print_json({"set": args.image, "manifest": manifest, "disks": dict(infos)})
        return 0
    stdout.print(f"backup set   {args.image} ({MANIFEST} version {manifest['version']}), "
                 f"{len(manifest['disks'])} disk{'s' * (len(manifest['disks']) != 1)}, created {manifest['created']}"
                 f" on {shown(str(manifest.get('host')))}, finished {manifest.get('finished')}")
    for name, info in infos:
        stdout.print(f"\n[disk {name}]", markup=False)
        _print(info, args.partition)
    return 0


def _listing(location: str, as_json: bool) -> int:
    from ..image.catalog import catalog

    entries = catalog(location)
    if as_json:
        print_json({"location": location, "entries": entries})
        return 0
    if not entries:
        stdout.print(f"no images under {location}")
        return 0
    for e in entries:
        if e["kind"] == "upload":
            stdout.print(f"{e['name']}  unfinished upload, {e['parts']} parts, {human_bytes(e['stored_bytes'])} "
                         f"uploaded, started {e['modified']} (image --resume continues it, --abort discards it)")
            continue
        if e["kind"] == "set":
            stdout.print(f"{e['name']}  backup set, manifest of {e['modified']}")
            continue
        src = e["source"]
        what = src.get("model") or src.get("path") or src.get("kind") or "?"
        parts = f", {e['parts']} parts" if e["parts"] > 1 else ""
        used = ", used-only" if e["used_only"] else ""
        stdout.print(f"{e['name']}  {human_bytes(e['stored_bytes'])} of {human_bytes(e['source_size'])}{parts}"
                     f"{used}, source {what} on {e['hostname']}, created {e['created']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..ops.manifest import is_set_dir
    from ..storage import is_listing

    if is_listing(args.image):
        return _listing(args.image, args.json)
    if is_set_dir(args.image):
        return _run_set(args)
    from . import info_source

    if info_source.is_raw_source(args.image):  # a disk, partition or raw volume file: what image would read
        return info_source.run(args.image, args.json, args.partition)
    try:
        reader = open_reader(args)
    except IncompleteImageError as e:
        from .partial import report_partial

        report_partial(args.image, args.json, e)
        raise
    with reader:
        info = describe(reader)
    if args.json:
        print_json(info)
        return 0
    _print(info, args.partition)
    return 0
