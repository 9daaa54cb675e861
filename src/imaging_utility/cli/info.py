"""``info IMAGE``: metadata, layout, digests and bad ranges of an image."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import IncompleteImageError
from ..extents import ExtentKind
from ..image.reader import ImageReader, open_image
from .output import human_bytes, print_json, shown, stdout
from .partial import report_partial

EXAMPLES = """
examples:
  imaging-utility info sdb.img.zst
  imaging-utility info --json sdb.img.zst.001 | jq .digests
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("info", parents=[parent], help="show an image's metadata, layout and digests",
                       description="Show an image's metadata, layout, digests and bad ranges.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return ["info"]


def describe(reader: ImageReader) -> dict[str, Any]:
    kinds: dict[str, int] = {k.value: 0 for k in ExtentKind}
    for ext in reader.chunk_map():
        kinds[ext.kind.value] += ext.length
    h, t = reader.header, reader.trailer
    info: dict[str, Any] = {
        "image": reader.paths,
        "format_version": f"{2}.{h.version_minor}",
        "image_bytes": reader.image_bytes,
        "source_size": reader.size,
        "sector_size": h.sector_size,
        "chunk_size": h.chunk_size,
        "chunk_count": reader.chunk_count,
        "ratio": round(reader.image_bytes / reader.size, 4) if reader.size else None,
        "level": h.meta.get("level"),
        "created": h.meta.get("created"),
        "finished": t.meta.get("finished") if t else None,
        "tool": h.meta.get("tool"),
        "hostname": h.meta.get("hostname"),
        "command_line": h.meta.get("command_line"),
        "source": h.meta.get("source", {}),
        "digests": (t.meta.get("digests", {}) if t else {}),
        "layout_bytes": kinds,
        "used_only": h.meta.get("used_only"),
        "bad_ranges": [{"offset": o, "length": n} for o, n in reader.bad_ranges],
    }
    return info


def _say(text: str) -> None:
    """A line of the report: text from the image (names, paths, host names) is escaped, never markup."""
    stdout.print(shown(text), markup=False)


def run(args: argparse.Namespace) -> int:
    try:
        reader = open_image(args.image)
    except IncompleteImageError as e:
        report_partial(args.image, args.json, e)
        raise
    with reader:
        info = describe(reader)
    if args.json:
        print_json(info)
        return 0
    parts = info["image"]
    _say(f"image        {parts[0]}" + (f" (+{len(parts) - 1} parts)" if len(parts) > 1 else ""))
    _say(f"format       imaging-utility v{info['format_version']} (seekable zstd, level {info['level']})")
    ratio = f" ({info['ratio'] * 100:.1f}%)" if info["ratio"] is not None else ""
    _say(f"source size  {human_bytes(info['source_size'])} ({info['source_size']} bytes)")
    _say(f"image size   {human_bytes(info['image_bytes'])}{ratio}")
    _say(f"chunks       {info['chunk_count']} × {human_bytes(info['chunk_size'])}, "
         f"sector size {info['sector_size']}")
    lay = info["layout_bytes"]
    _say("layout       " + ", ".join(f"{k} {human_bytes(v)}" for k, v in lay.items() if v))
    _say(f"created      {info['created']} on {info['hostname']} by {info['tool']}")
    _say(f"finished     {info['finished']}")
    src = info["source"]
    if src:
        _say("source       " + ", ".join(f"{k}={v}" for k, v in src.items() if v not in (None, "", [])))
    uo = info["used_only"]
    if uo:
        fs = uo.get("filesystem", {})
        used = uo.get("used_bytes", 0)
        _say(f"used-only    {fs.get('type', '?')}, cluster {uo.get('cluster_size')} bytes, "
             f"used {human_bytes(used)} of {human_bytes(info['source_size'])} "
             f"({used / max(1, info['source_size']) * 100:.1f}%)")
        for vol in fs.get("volumes") or []:  # an LVM2 physical volume: each logical volume
            note = f"; {vol['note']}" if vol.get("note") else ""
            _say(f"  volume     {vol['name']}: {vol.get('filesystem') or 'no known filesystem'}, "
                 f"{human_bytes(vol['size'])}, {human_bytes(vol['used_bytes'])} kept{note}")
    for name, digest in info["digests"].items():
        _say(f"{name:<12} {digest}")
    if info["bad_ranges"]:
        total = sum(r["length"] for r in info["bad_ranges"])
        _say(f"bad ranges   {len(info['bad_ranges'])} ({human_bytes(total)} unreadable, zero-filled):")
        for r in info["bad_ranges"]:
            _say(f"  offset {r['offset']} length {r['length']} (sector {r['offset'] // info['sector_size']})")
    return 0
