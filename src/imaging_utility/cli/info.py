"""``info IMAGE``: metadata, layout, digests and bad ranges of an image."""

from __future__ import annotations

import argparse
from typing import Any

from ..extents import ExtentKind
from ..format import c_image as c
from ..image.reader import ImageReader, open_image
from .output import human_bytes, print_json, stdout

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


def format_version(major: int, minor: int) -> str:
    """``"1.0"``; pre-release images numbered their 1.0 frames 2.0 (spec §10)."""
    return "1.0" if (major, minor) == c.PRERELEASE_VERSION else f"{major}.{minor}"


def describe(reader: ImageReader) -> dict[str, Any]:
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
        "layout_bytes": kinds,
        "used_only": h.meta.get("used_only"),
        "bad_ranges": [{"offset": o, "length": n} for o, n in reader.bad_ranges],
    }
    return info


def run(args: argparse.Namespace) -> int:
    with open_image(args.image) as reader:
        info = describe(reader)
    if args.json:
        print_json(info)
        return 0
    parts = info["image"]
    stdout.print(f"image        {parts[0]}" + (f" (+{len(parts) - 1} parts)" if len(parts) > 1 else ""))
    stdout.print(f"format       imaging-utility image format {info['format_version']} "
                 f"(seekable zstd, level {info['level']})")
    ratio = f" ({info['ratio'] * 100:.1f}%)" if info["ratio"] is not None else ""
    stdout.print(f"source size  {human_bytes(info['source_size'])} ({info['source_size']} bytes)")
    stdout.print(f"image size   {human_bytes(info['image_bytes'])}{ratio}")
    stdout.print(f"chunks       {info['chunk_count']} × {human_bytes(info['chunk_size'])}, "
                 f"sector size {info['sector_size']}")
    lay = info["layout_bytes"]
    stdout.print("layout       " + ", ".join(f"{k} {human_bytes(v)}" for k, v in lay.items() if v))
    stdout.print(f"created      {info['created']} on {info['hostname']} by {info['tool']}")
    stdout.print(f"finished     {info['finished']}")
    src = info["source"]
    if src:
        stdout.print("source       " + ", ".join(f"{k}={v}" for k, v in src.items() if v not in (None, "", [])))
    uo = info["used_only"]
    if uo:
        fs = uo.get("filesystem", {})
        used = uo.get("used_bytes", 0)
        stdout.print(f"used-only    {fs.get('type', '?')}, cluster {uo.get('cluster_size')} bytes, "
                     f"used {human_bytes(used)} of {human_bytes(info['source_size'])} "
                     f"({used / max(1, info['source_size']) * 100:.1f}%)")
        for vol in fs.get("volumes") or []:  # an LVM2 physical volume: each logical volume
            note = f"; {vol['note']}" if vol.get("note") else ""
            stdout.print(f"  volume     {vol['name']}: {vol.get('filesystem') or 'no known filesystem'}, "
                         f"{human_bytes(vol['size'])}, {human_bytes(vol['used_bytes'])} kept{note}")
    for name, digest in info["digests"].items():
        stdout.print(f"{name:<12} {digest}")
    if info["bad_ranges"]:
        total = sum(r["length"] for r in info["bad_ranges"])
        stdout.print(f"bad ranges   {len(info['bad_ranges'])} ({human_bytes(total)} unreadable, zero-filled):")
        for r in info["bad_ranges"]:
            stdout.print(f"  offset {r['offset']} length {r['length']} (sector {r['offset'] // info['sector_size']})")
    return 0
