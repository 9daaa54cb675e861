"""``extract`` (alias ``ntfs-extract``): copy files and directories out of the filesystem inside an image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import EXIT_PARTIAL, UsageError
from ._source_args import warn_table
from .ls import add_source_options, tree_source_args
from .output import ProgressBar, print_json, shown, warn

EXAMPLES = """\
examples:
  imaging-utility extract disk.img.zst --partition 2 /Users/ann/Documents ./rescued
  imaging-utility extract part1.img.zst /etc/fstab /home/bob ./out       files and whole trees
  imaging-utility extract part1.img.zst / ./everything                   as root: owners, modes, links, ACLs
  imaging-utility extract --no-owner --no-xattrs root.img.zst /srv ./srv  only modes and times
  imaging-utility extract --map-owner 1000:1001 home.img.zst /home/ann ./ann   uid 1000 becomes 1001
  imaging-utility extract --overwrite part1.img.zst /etc ./out           replace what an earlier run wrote
  imaging-utility extract --streams c.img.zst /data/report.docx ./out    NTFS streams as name:stream
  imaging-utility extract sdb1.raw /photos ./photos                      a raw volume or device works too
  imaging-utility extract --lv vg0/home pv.img.zst /alice ./alice         inside an LVM2 logical volume
  imaging-utility extract --subvolume @home btrfs.img.zst / ./home        a Btrfs subvolume

Restored: data (sparse stays sparse), directories, symlinks (as stored, never followed), hard links,
FIFOs, sockets, device nodes (root), permission bits, owner and group (root, numeric ids), extended
attributes and POSIX ACLs (root, or --xattrs), access and modification times; the change time cannot
be set. Nothing already in DEST is written into or replaced without --overwrite. Names unsafe on Linux
(control characters, '/', '..', over 255 bytes), and names DEST's filesystem would merge (case), are
renamed and listed. Exit 3 when some entries failed.
"""


def _id_map(text: str) -> tuple[int, int]:
    old, sep, new = text.partition(":")
    if not sep or not old.isdigit() or not new.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use OLD:NEW with numeric ids, e.g. 1000:1001")
    return int(old), int(new)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    names = []
    for name in ("extract", "ntfs-extract"):
        p = subparsers.add_parser(
            name, parents=[parent], help="copy files out of an image (NTFS, ext2/3/4, FAT, exFAT, XFS, Btrfs)"
            if name == "extract" else "alias of extract",
            description="Copy files and directory trees out of the filesystem inside an image, partition, "
                        "raw volume file or device, without mounting, as Linux files: modes, owners (as "
                        "root), links, special files, extended attributes and times. Nothing is ever "
                        "written outside DEST.",
            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("image", metavar="IMAGE", help="image, raw volume file or device")
        p.add_argument("paths", metavar="PATH", nargs="+", help="files or directories in the image, then DEST")
        p.add_argument("--streams", action="store_true", help="also write NTFS alternate data streams as NAME:STREAM")
        owner = p.add_mutually_exclusive_group()
        owner.add_argument("--owner", dest="owner", action="store_const", const=True, default=None,
                           help="restore owners and groups (the default as root; needs root)")
        owner.add_argument("--no-owner", dest="owner", action="store_const", const=False,
                           help="leave every entry owned by the user running the command")
        p.add_argument("--map-owner", metavar="OLD:NEW", type=_id_map, action="append", default=[],
                       help="restore uid OLD as NEW (repeatable)")
        p.add_argument("--map-group", metavar="OLD:NEW", type=_id_map, action="append", default=[],
                       help="restore gid OLD as NEW (repeatable)")
        xattrs = p.add_mutually_exclusive_group()
        xattrs.add_argument("--xattrs", dest="xattrs", action="store_const", const=True, default=None,
                            help="restore extended attributes and POSIX ACLs (the default as root)")
        xattrs.add_argument("--no-xattrs", dest="xattrs", action="store_const", const=False,
                            help="do not restore extended attributes and ACLs")
        p.add_argument("--overwrite", action="store_true",
                       help="replace entries already in DEST (unlinked first, never written through; "
                            "directories are merged, never removed)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        add_source_options(p)
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    import json

    from ..ops.files import ExtractOptions, extract, open_image_tree, source_files

    if len(args.paths) < 2:
        raise UsageError("give at least one PATH inside the image and a DEST directory")
    *paths, dest = args.paths
    tree, source = open_image_tree(args.image, **tree_source_args(args))
    opts = ExtractOptions(streams=args.streams, owner=args.owner, xattrs=args.xattrs, overwrite=args.overwrite,
                          keep_files=source_files(source), users=dict(args.map_owner), groups=dict(args.map_group))
    if args.partition is not None:
        warn_table(source)  # a truncated disk: which partitions are cut or missing
    try:
        for message in tree.warnings:
            warn(message)
        with ProgressBar(output_label="written") as bar:
            report = extract(tree, paths, dest, opts, progress=bar if bar.enabled else None)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if args.json:
        print_json({"files": report.files, "dirs": report.dirs, "symlinks": report.symlinks,
                    "hardlinks": report.hardlinks, "special": report.special, "bytes": report.bytes,
                    "failed": [{"path": p, "error": m} for p, m in report.failed], "skipped": report.skipped,
                    "renamed": [{"path": p, "written_as": n} for p, n in report.renamed],
                    "notes": [{"note": r, "count": n, "first": p} for r, n, p in report.notes]})
    else:
        extra = "".join(f", {n} {what}" for n, what in ((report.symlinks, "symlinks"), (report.hardlinks, "hard links"),
                                                       (report.special, "special files")) if n)
        print(f"extracted {report.files} files ({report.bytes:,} bytes), {report.dirs} directories{extra} "
              f"into {shown(dest)}")
        for path, new in report.renamed:
            print(f"renamed: {shown(path)} -> {json.dumps(new)}")
        for item in report.skipped:
            target = f" -> {shown(item['target'])}" if item["target"] else ""
            print(f"imaging-utility: note: not created ({item['type']}): {shown(item['path'])}{target}: {item['why']}",
                  file=sys.stderr)
        for reason, n, first in report.notes:
            print(f"imaging-utility: note: {reason} ({n} entr{'y' if n == 1 else 'ies'}, first {shown(first)})",
                  file=sys.stderr)
        for path, why in report.failed:  # a damaged entry's reason names its path already
            said = shown(why) if why.startswith(f"{path}: ") else f"{shown(path)}: {shown(why)}"
            print(f"imaging-utility: error: {said}", file=sys.stderr)
    if report.failed:
        existing = sum(1 for _path, why in report.failed if "already exists in the destination" in why)
        hint = f" ({existing} already existed in DEST: --overwrite replaces them)" if existing else ""
        print(f"imaging-utility: {len(report.failed)} item(s) could not be extracted{hint}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0
