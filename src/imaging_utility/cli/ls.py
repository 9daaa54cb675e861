"""``ls``: list files inside the filesystem of an image, partition, raw volume or device — no mount, no root."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_PARTIAL
from ._source_args import add_set_options, warn_table
from .output import ProgressBar, parse_size, print_json, shown, warn

if TYPE_CHECKING:
    from ..filesystems.tree import Entry

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
  imaging-utility ls --volume imsm_Datap1 rst-member.img.zst /     a volume by the name serve-proxy gives it
"""

_TYPE_CHAR = {"reparse": "r", "other": "?", "damaged": "!"}


def add_source_options(p: argparse.ArgumentParser) -> None:
    """``--partition`` / ``--offset`` / ``--length`` / ``--volume`` / ``--lv`` / ``--subvolume``, shared by ls,
    extract and webdav."""
    p.add_argument("--partition", type=int, metavar="N", help="use partition N of a whole-disk image (Linux numbering)")
    p.add_argument("--offset", type=parse_size, metavar="N", help="the filesystem starts at byte N")
    p.add_argument("--length", type=parse_size, metavar="N", help="and is N bytes long (default: to the end)")
    p.add_argument("--volume", metavar="NAME",
                   help="use the volume serve-proxy exports and mount shows by this name: p2, vg0-root, "
                        "ldm_vol_GROUP_NAME, imsm_NAME, imsm_NAMEp1 (a firmware RAID volume and its partitions)")
    p.add_argument("--lv", metavar="VG/LV", help="use logical volume VG/LV of the LVM2 physical volume there, or "
                   "volume [GROUP/]NAME of the Windows dynamic disk (LDM) partition chosen with --partition")
    p.add_argument("--subvolume", metavar="NAME|ID",
                   help="Btrfs: use this subvolume (path or id) instead of the default one")
    add_set_options(p)


def tree_source_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``open_image_tree`` keyword arguments from ``add_source_options``."""
    return {"partition": args.partition, "offset": args.offset, "length": args.length, "lv": args.lv,
            "subvolume": args.subvolume, "disk": args.disk, "volume_name": args.volume}


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = subparsers.add_parser(
        "ls", parents=[parent], help="list files inside an image (NTFS, ext2/3/4, FAT, exFAT, XFS, Btrfs)",
        description="List the files in the filesystem inside an image, one of its partitions, a raw "
                    "volume file or a device, without mounting and without root. Exit 3 when some "
                    "entries could not be read (damaged metadata); they are named on stderr.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="image, raw volume file or device")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="directory or file (default: /)")
    p.add_argument("-l", dest="long", action="store_true",
                   help="long format: type and mode, links, owner, group, size, mtime (UTC), inode, link target")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories recursively")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.add_argument("--damaged", action="store_true",
                   help="list the files whose data touches unreadable ranges of the image, with the bytes lost")
    add_source_options(p)
    return ["ls"]


def _line(e: Entry, long: bool, full: bool) -> str:
    name = shown(e.path if full else e.name) + ("/" if e.type == "dir" else "")
    if e.type in ("symlink", "reparse") and e.target:
        name += f" -> {shown(e.target)}"
    if e.streams:
        name += "  [streams: " + ", ".join(shown(s) for s in e.streams) + "]"
    if not long:
        return name
    when = e.mtime.strftime("%Y-%m-%d %H:%M:%S") if e.mtime else "-" * 19
    inode = "" if e.inode is None else str(e.inode)
    mode = stat.filemode(e.st_mode)
    if e.type in _TYPE_CHAR:
        mode = _TYPE_CHAR[e.type] + mode[1:]
    size = f"{os.major(e.rdev)}, {os.minor(e.rdev)}" if e.rdev is not None else f"{e.size:,}"
    owner = "-" if e.uid is None else str(e.uid)
    group = "-" if e.gid is None else str(e.gid)
    links = "-" if e.nlink is None else str(e.nlink)
    return f"{mode} {links:>3} {owner:>5} {group:>5} {size:>14} {when} {inode:>9} {name}"


def _damaged(as_json: bool, tree: Any, source: Any) -> int:
    """Files whose data lies in ranges the capture could not read, or in image chunks that fail their
    checksums (every chunk of the volume is checked)."""
    from ..ops.files import corrupt_ranges, damaged_files, volume_bad_ranges
    from ..progress import Throttled

    with ProgressBar(output_label="") as bar:
        corrupt = corrupt_ranges(source, tree, Throttled(bar))
    found = [(p, r, "unreadable") for p, r in damaged_files(tree, volume_bad_ranges(source, tree))]
    found += [(p, r, "corrupt") for p, r in damaged_files(tree, [(o, n) for o, n, _why in corrupt])]
    found.sort()
    if as_json:
        print_json([{"path": p, "cause": cause, "lost": [{"offset": o, "length": n} for o, n in r],
                     "lost_bytes": sum(n for _, n in r)} for p, r, cause in found])
    else:
        for path, ranges, cause in found:
            spans = ", ".join(f"{o}+{n}" for o, n in ranges)
            where = " (in image chunks that fail their checksums)" if cause == "corrupt" else ""
            print(f"{shown(path)}\t{sum(n for _, n in ranges)} bytes lost at file offsets {spans}{where}")
        if corrupt:
            print(f"imaging-utility: {len(corrupt)} image chunk(s) of this volume fail their checksums "
                  f"(first: {shown(corrupt[0][2])}); 'verify' lists them", file=sys.stderr)
        if not found:
            print("no file data lies in unreadable ranges or corrupt chunks", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..ops.files import open_image_tree

    tree, source = open_image_tree(args.image, **tree_source_args(args))
    if args.partition is not None:
        warn_table(source)  # a truncated disk: which partitions are cut or missing
    try:
        for message in tree.warnings:
            warn(message)
        if args.damaged:
            return _damaged(args.json, tree, source)
        top = tree.stat(args.path)
        entries: Iterator[Any]
        if top.type != "dir":
            entries = iter([top])
        elif args.recursive:
            entries = tree.walk(top.path)
        else:
            entries = tree.iterdir(top.path)
        # Written as read: a directory of millions of entries costs no more memory than one of ten.
        import json

        out = sys.stdout
        bad = 0
        if args.json:
            out.write("[")
        for i, e in enumerate(entries):
            if e.type == "damaged":
                bad += 1
                print(f"imaging-utility: error: {shown(e.error or e.path)}", file=sys.stderr)
            if args.json:
                out.write(("\n" if i == 0 else ",\n") + json.dumps(e.to_json(), sort_keys=True, default=str))
            elif e.type != "damaged":
                out.write(_line(e, args.long, args.recursive) + "\n")
        if args.json:
            out.write("\n]\n")
        return EXIT_PARTIAL if bad else 0
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
