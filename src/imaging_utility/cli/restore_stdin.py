"""``restore - TARGET``: restore an image arriving on standard input (``ssh host cat x.img.zst | ...``)."""

from __future__ import annotations

import argparse
import sys

from ..devices.mounts import check_target_safe
from ..devices.targets import symlink_note
from ..errors import RefusedError
from ..ops.restore_stream import restore_stream
from ..progress import Throttled
from .output import ProgressBar, human_bytes, print_json, stdout, warn


def run_stdin(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        raise RefusedError("restore - reads the image from standard input, which is a terminal: pipe it in, "
                           "e.g. 'ssh host cat disk.img.zst | imaging-utility restore - disk.raw'")
    note = symlink_note(args.target, args.force)
    if note:
        warn(note)
    check_target_safe(args.target)

    def confirm() -> bool:
        if not args.yes:
            raise RefusedError(f"refusing to overwrite block device {args.target} without confirmation: the image "
                               "comes on standard input, so nobody can be asked; add --yes")
        return True

    with ProgressBar(output_label="written") as bar:
        throttled = Throttled(bar)
        result = restore_stream(sys.stdin.buffer, args.target, force=args.force, confirm=confirm,
                                threads=args.threads, verify=args.verify, progress=throttled)
        throttled.flush()
    if result.bad_ranges:
        total = sum(n for _, n in result.bad_ranges)
        warn(f"the image has {len(result.bad_ranges)} unreadable source ranges ({total} bytes); "
             "they are restored as zeros")
    if args.json:
        print_json({"target": result.target, "device": result.is_device, "bytes": result.bytes_total,
                    "bytes_written": result.bytes_written, "holes": result.holes,
                    "seconds": round(result.elapsed, 3), "digests": result.digests})
    else:
        stdout.print(f"restored {human_bytes(result.bytes_total)} from standard input to {result.target} in "
                     f"{result.elapsed:.1f} s ({human_bytes(result.bytes_written)} written, every chunk checked)",
                     markup=False)
        for name, d in result.digests.items():
            stdout.print(f"{name:<8} {d['actual']} ok")
    return 0
