"""``ls``: list files inside the filesystem of an image, partition, raw volume or device — no mount, no root."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import EXIT_PARTIAL
from .output import parse_size, print_json

EXAMPLES = """\
examples:
  imaging-utility ls disk.img.zst --partition 2 /Users
  imaging-utility ls -l part1.img.zst /
  imaging-utility ls -lR part1.img.zst /etc
  imaging-utility ls --json -R part1.img.zst / > files.json
  imaging-utility ls --damaged rescued.img.zst --partition 1
      files whose data lies in sectors that could not be read (image --rescue), with the bytes lost
  imaging-utility ls -l sdb1.raw /            a raw volume file or a device works too
  imaging-utility ls disk.img.zst --offset 1M --length 512M /
  imaging-utility ls -l --partition 3 --lv vg0/root server.img.zst /etc      a logical volume of an LVM2 PV
  imaging-utility ls --subvolume @home btrfs.img.zst /                       a Btrfs subvolume (name or id)
"""

_TYPE_CHAR = {"file": "-", "dir": "d", "symlink": "l", "reparse": "r", "other": "?", "damaged": "!"}


def add_source_options(p: argparse.ArgumentParser) -> None:
    """``--partition`` / ``--offset`` / ``--length`` / ``--lv`` / ``--subvolume``, shared by ls, extract and webdav."""
    p.add_argument("--partition", type=int, metavar="N", help="use partition N of a whole-disk image (Linux numbering)")
    p.add_argument("--offset", type=parse_size, metavar="N", help="the filesystem starts at byte N")
    p.add_argument("--length", type=parse_size, metavar="N", help="and is N bytes long (default: to the end)")
    p.add_argument("--lv", metavar="VG/LV", help="use logical volume VG/LV of the LVM2 physical volume there")
    p.add_argument("--subvolume", metavar="NAME|ID",
                   help="Btrfs: use this subvolume (path or id) instead of the default one")


def tree_source_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``open_image_tree`` keyword arguments from ``add_source_options``."""
    return {"partition": args.partition, "offset": args.offset, "length": args.length, "lv": args.lv,
            "subvolume": args.subvolume}


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = subparsers.add_parser(
        "ls", parents=[parent], help="list files inside an image (NTFS, ext2/3/4, FAT, exFAT, XFS, Btrfs)",
        description="List the files in the filesystem inside an image, one of its partitions, a raw "
                    "volume file or a device, without mounting and without root. Exit 3 when some "
                    "entries could not be read (damaged metadata); they are named on stderr.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="image, raw volume file or device")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="directory or file (default: /)")
    p.add_argument("-l", dest="long", action="store_true", help="long format: type, size, mtime (UTC), inode")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories recursively")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.add_argument("--damaged", action="store_true",
                   help="list the files whose data touches unreadable ranges of the image, with the bytes lost")
    add_source_options(p)
    return ["ls"]


def shown(text: str) -> str:
    """``text`` safe for a terminal: control characters and undecodable bytes as ``\\xNN``."""
    out = []
    for c in text:
        o = ord(c)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(c)
    return "".join(out)


def _line(e: Any, long: bool, full: bool) -> str:
    name = shown(e.path if full else e.name) + ("/" if e.type == "dir" else "")
    if e.type in ("symlink", "reparse") and e.target:
        name += f" -> {shown(e.target)}"
    if e.streams:
        name += "  [streams: " + ", ".join(shown(s) for s in e.streams) + "]"
    if not long:
        return name
    when = e.mtime.strftime("%Y-%m-%d %H:%M:%S") if e.mtime else "-" * 19
    inode = "" if e.inode is None else str(e.inode)
    return f"{_TYPE_CHAR.get(e.type, '?')} {e.size:>14,} {when} {inode:>9} {name}"


def run(args: argparse.Namespace) -> int:
    from ..ops.files import damaged_files, open_image_tree, volume_bad_ranges

    tree, source = open_image_tree(args.image, **tree_source_args(args))
    try:
        if args.damaged:
            found = damaged_files(tree, volume_bad_ranges(source, tree))
            if args.json:
                print_json([{"path": p, "lost": [{"offset": o, "length": n} for o, n in r],
                             "lost_bytes": sum(n for _, n in r)} for p, r in found])
            else:
                for path, ranges in found:
                    spans = ", ".join(f"{o}+{n}" for o, n in ranges)
                    print(f"{shown(path)}\t{sum(n for _, n in ranges)} bytes lost at file offsets {spans}")
                if not found:
                    print("no file data lies in unreadable ranges", file=sys.stderr)
            return 0
        top = tree.stat(args.path)
        if top.type != "dir":
            entries = [top]
        elif args.recursive:
            entries = list(tree.walk(top.path))
        else:
            entries = tree.list(top.path)
        if args.json:
            print_json([e.to_json() for e in entries])
        else:
            out = sys.stdout
            for e in entries:
                if e.type != "damaged":
                    out.write(_line(e, args.long, args.recursive) + "\n")
        bad = [e for e in entries if e.type == "damaged"]
        for e in bad:
            print(f"imaging-utility: error: {shown(e.error or e.path)}", file=sys.stderr)
        return EXIT_PARTIAL if bad else 0
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
