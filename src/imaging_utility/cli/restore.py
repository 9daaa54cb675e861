"""``restore IMAGE TARGET``: write an image back to a file (sparse) or a block device."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import RefusedError
from .output import ProgressBar, human_bytes, print_json, stdout, warn

EXAMPLES = """
examples:
  imaging-utility restore sdb.img.zst sdb.raw                 # sparse file: zero chunks become holes
  imaging-utility restore --verify sdb.img.zst /dev/sdc        # asks before overwriting /dev/sdc
  imaging-utility restore --yes sdb.img.zst.001 /dev/sdc       # no question (scripts)
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("restore", parents=[parent], help="write an image to a file or block device",
                       description="Write IMAGE's bytes to TARGET: a new or existing file (sparse) or a "
                       "block device at least as large as the image (asks for confirmation).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--force", action="store_true", help="overwrite an existing target file")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before writing to a block device")
    p.add_argument("--verify", action="store_true", help="also recompute and compare the whole-image digests")
    p.add_argument("--threads", type=int, default=None, help="decoding threads (default: number of CPUs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return ["restore"]


def _confirm(target: str, size: int) -> bool:
    if not sys.stdin.isatty():
        raise RefusedError(f"refusing to overwrite block device {target} without confirmation; add --yes")
    sys.stderr.write(f"This overwrites {target} with {human_bytes(size)}. Type 'yes' to continue: ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() == "yes"


def run(args: argparse.Namespace) -> int:
    from ..devices.mounts import check_target_safe
    from ..image.reader import open_image
    from ..ops.restore import restore
    from ..progress import Throttled

    check_target_safe(args.target)
    with open_image(args.image) as reader:
        if reader.bad_ranges:
            total = sum(n for _, n in reader.bad_ranges)
            warn(f"the image has {len(reader.bad_ranges)} unreadable source ranges ({total} bytes); "
                 "they are restored as zeros")
        with ProgressBar(output_label="written") as bar:
            throttled = Throttled(bar)
            result = restore(reader, args.target, force=args.force,
                             confirm=lambda: args.yes or _confirm(args.target, reader.size),
                             threads=args.threads, verify=args.verify, progress=throttled)
            throttled.flush()
    summary = {
        "target": result.target, "device": result.is_device, "bytes": result.bytes_total,
        "bytes_written": result.bytes_written, "holes": result.holes, "seconds": round(result.elapsed, 3),
        "digests": result.digests,
    }
    if args.json:
        print_json(summary)
    else:
        stdout.print(f"restored {human_bytes(result.bytes_total)} to {result.target} in {result.elapsed:.1f} s "
                     f"({human_bytes(result.bytes_written)} written, {result.holes} zero chunks "
                     + ("left as holes)" if not result.is_device else "written as zeros)"))
        for name, d in result.digests.items():
            stdout.print(f"{name:<8} {d['actual']} ok")
    return 0
