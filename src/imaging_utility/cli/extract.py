"""``extract`` (alias ``ntfs-extract``): copy files and directories out of the filesystem inside an image."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import EXIT_PARTIAL, UsageError
from .ls import add_source_options, shown, tree_source_args
from .output import ProgressBar, print_json

EXAMPLES = """\
examples:
  imaging-utility extract disk.img.zst --partition 2 /Users/ann/Documents ./rescued
  imaging-utility extract part1.img.zst /etc/fstab /home/bob ./out       files and whole trees
  imaging-utility extract part1.img.zst / ./everything
  imaging-utility extract --streams c.img.zst /data/report.docx ./out    NTFS streams as name:stream
  imaging-utility extract sdb1.raw /photos ./photos                      a raw volume or device works too
  imaging-utility extract --lv vg0/home pv.img.zst /alice ./alice         inside an LVM2 logical volume
  imaging-utility extract --subvolume @home btrfs.img.zst / ./home        a Btrfs subvolume

Symlinks and reparse points are listed, not created. Names that are unsafe on Linux (control
characters, '/', '..', over 255 bytes) are renamed and listed. Exit 3 when some files failed.
"""


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    names = []
    for name in ("extract", "ntfs-extract"):
        p = subparsers.add_parser(
            name, parents=[parent], help="copy files out of an image (NTFS, ext2/3/4, FAT, exFAT, XFS, Btrfs)"
            if name == "extract" else "alias of extract",
            description="Copy files and directory trees out of the filesystem inside an image, partition, "
                        "raw volume file or device, without mounting and without root. Modification times "
                        "are kept and sparse files stay sparse. Nothing is ever written outside DEST.",
            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("image", metavar="IMAGE", help="image, raw volume file or device")
        p.add_argument("paths", metavar="PATH", nargs="+", help="files or directories in the image, then DEST")
        p.add_argument("--streams", action="store_true", help="also write NTFS alternate data streams as NAME:STREAM")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        add_source_options(p)
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    from ..ops.files import extract, open_image_tree

    if len(args.paths) < 2:
        raise UsageError("give at least one PATH inside the image and a DEST directory")
    *paths, dest = args.paths
    tree, source = open_image_tree(args.image, **tree_source_args(args))
    try:
        with ProgressBar(output_label="written") as bar:
            report = extract(tree, paths, dest, streams=args.streams, progress=bar if bar.enabled else None)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if args.json:
        print_json({"files": report.files, "dirs": report.dirs, "bytes": report.bytes,
                    "failed": [{"path": p, "error": m} for p, m in report.failed],
                    "links": report.links, "renamed": [{"path": p, "written_as": n} for p, n in report.renamed]})
    else:
        print(f"extracted {report.files} files ({report.bytes:,} bytes) and {report.dirs} directories into {dest}")
        for link in report.links:
            print(f"not created ({link['type']}): {shown(link['path'])} -> {shown(link['target'])}")
        for path, new in report.renamed:
            print(f"renamed: {shown(path)} -> {json.dumps(new)}")
        for path, why in report.failed:
            print(f"imaging-utility: error: {shown(path)}: {shown(why)}", file=sys.stderr)
    if report.failed:
        print(f"imaging-utility: {len(report.failed)} item(s) could not be extracted", file=sys.stderr)
        return EXIT_PARTIAL
    return 0
