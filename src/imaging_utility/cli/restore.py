"""``restore IMAGE|SETDIR TARGET``: write an image back to a file, a block device, a whole disk or one partition."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_PARTIAL, RefusedError
from ._source_args import add_set_options, open_reader
from .output import ProgressBar, human_bytes, print_json, stderr, stdout, thread_count, warn

if TYPE_CHECKING:  # the rest is imported when the command runs (every command module loads at start-up)
    from ..devices.throttle import Throttle
    from ..image.reader import ImageReader
    from ..ops.restore_disk import DiskRestorePlan
    from ..ops.restore_writer import CorruptChunk
    from ..partitions import Partition

EXAMPLES = """
examples:
  imaging-utility restore sdb.img.zst sdb.raw                 # sparse file: zero chunks become holes
  imaging-utility restore --verify sdb.img.zst /dev/sdc        # shows both disks, asks for the device name
  imaging-utility restore --yes sdb.img.zst.001 /dev/sdc       # no question (scripts)
  imaging-utility restore /backups/2024-06-01 /dev/sdc         # a backup set (one disk); GPT fitted to sdc
  imaging-utility restore --set-dir /backups/2024-06-01 --disk sda --allow-smaller /dev/sdc
  imaging-utility restore --new-ids /backups/2024-06-01 /dev/sdd      # a clone beside the original
  imaging-utility restore --set-dir /backups/2024-06-01 --partition 2 /dev/sdc2   # one partition only
  imaging-utility restore --set-dir /backups/2024-06-01 --partition 3 home.raw    # ... or into a file
  imaging-utility restore --continue-on-error damaged.img.zst out.raw  # corrupt chunks zero-filled, exit 3
  ssh backup 'cat sdb.img.zst' | imaging-utility restore --yes - /dev/sdc   # from standard input
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("restore", parents=[parent], help="write an image to a file, disk or partition",
                       description="Write IMAGE's bytes to TARGET: a new or existing file (sparse) or a block "
                       "device. A whole-disk image (or backup set) onto a disk gets its partition table fitted "
                       "to that disk; only stored data is written (free space is skipped).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE",
                   help="image, split set, or backup set directory; - reads an image from standard input")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing target file, or a disk holding another disk's partition table")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before writing to a block device")
    p.add_argument("--verify", action="store_true",
                   help="read back what was written and compare it (per partition for a disk)")
    p.add_argument("--allow-smaller", action="store_true",
                   help="restore a disk onto a smaller one when every partition fits")
    p.add_argument("--new-ids", action="store_true",
                   help="fresh GPT disk and partition GUIDs (or MBR disk signature), for a clone kept beside "
                   "the original")
    free = p.add_mutually_exclusive_group()
    free.add_argument("--discard", action="store_true", help="discard (TRIM) free space on the target")
    free.add_argument("--zero-free", action="store_true", help="make free space on the target read as zeros")
    p.add_argument("--continue-on-error", action="store_true",
                   help="zero-fill corrupt chunks, list them, and go on (exit 3)")
    p.add_argument("--max-throughput", metavar="RATE", help="cap the write rate, e.g. 100M (bytes/s)")
    p.add_argument("--threads", type=thread_count, default=None, help="decoding threads (default: number of CPUs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_set_options(p, partition=True)
    return ["restore"]


def _need_terminal(target: str) -> None:
    if not sys.stdin.isatty():
        raise RefusedError(f"refusing to overwrite {target} without confirmation (no terminal); add --yes")


def _confirm(target: str, name: str, what: str) -> bool:
    """Ask the user to type the device name; refuse without a terminal."""
    _need_terminal(target)
    sys.stderr.write(f"This overwrites {what}. Type the device name ({name}) to continue: ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer not in (name, f"/dev/{name}", target):
        raise RefusedError(f"not confirmed ({answer!r} is not {name}); nothing was written")
    return True


def _show_target(path: str) -> str:
    """Print what a block device holds now; return its kernel name."""
    from ..ops.diskmap import type_name
    from ..ops.target import inspect_target
    from ._disk_view import render_rows, table_info, table_summary

    view = inspect_target(path)
    stderr.print(f"target {path} ({human_bytes(view.size)}, {view.sector_size}-byte sectors) holds now:",
                 markup=False)
    if view.table.scheme:
        stderr.print("  " + table_summary(table_info(view.table, view.size), len(view.table.partitions),
                                          view.sector_size), markup=False)
        rows = [{"number": p.number, "start": p.offset, "size": p.length, "type": type_name(p),
                 "filesystem": fs.type if fs else None, "label": fs.label if fs else None, "used": None}
                for p in view.table.partitions for fs in [view.filesystems.get(p.number)]]
        for line in render_rows(rows, "    "):
            stderr.print(line, markup=False)
    elif view.volume:
        stderr.print(f"  {view.volume.type} filesystem, no partition table", markup=False)
    else:
        stderr.print("  no partition table and no known filesystem", markup=False)
    return view.name


def _show_plan(plan: DiskRestorePlan, label: str) -> None:
    from ._disk_view import render_rows, rows_from_meta, rows_from_table, table_info, table_summary

    r = plan.reader
    meta = r.header.meta.get("disk")
    stderr.print(f"will be written with {label} ({human_bytes(r.size)} disk):", markup=False)
    stderr.print("  " + table_summary(table_info(plan.table, r.size), len(plan.table.partitions), r.sector_size),
                 markup=False)
    rows = rows_from_meta(meta) if isinstance(meta, dict) else rows_from_table(r, plan.table, used=False)
    for line in render_rows(rows, "    "):
        stderr.print(line, markup=False)
    if plan.size_change != "same":
        delta = abs(plan.target.size - r.size)
        stderr.print(f"  the target is {human_bytes(delta)} {plan.size_change}"
                     + ("; the backup GPT goes to its end" if plan.table.gpt is not None else ""), markup=False)
    if plan.new_ids:
        stderr.print("  with new disk and partition identifiers", markup=False)
    for line in plan.differences:
        stderr.print(f"  differs: {line}", markup=False)


def _free(args: argparse.Namespace) -> str:
    from ..ops.restore_writer import FREE_DISCARD, FREE_SKIP, FREE_ZERO

    return FREE_DISCARD if args.discard else FREE_ZERO if args.zero_free else FREE_SKIP


def _report_corrupt(corrupt: list[CorruptChunk]) -> int:
    for c in corrupt:
        warn(f"chunk {c.chunk} (bytes {c.offset}..{c.offset + c.length}) is corrupt and was zero-filled: {c.error}")
    if corrupt:
        warn(f"{len(corrupt)} corrupt chunk(s) ({sum(c.length for c in corrupt)} bytes) were zero-filled")
        return EXIT_PARTIAL
    return 0


def run(args: argparse.Namespace) -> int:
    if args.image == "-":
        from .restore_stdin import run_stdin

        return run_stdin(args)
    from ..devices.mounts import check_target_safe
    from ..devices.targets import symlink_note
    from ..devices.throttle import Throttle, parse_rate
    from ..ops.diskmap import partition_table_of
    from ..ops.target import is_block_device

    note = symlink_note(args.target, args.force)
    if note:
        warn(note)
    check_target_safe(args.target)
    throttle = Throttle(parse_rate(args.max_throughput)) if args.max_throughput else None
    with open_reader(args) as reader:
        if reader.bad_ranges:
            total = sum(n for _, n in reader.bad_ranges)
            warn(f"the image has {len(reader.bad_ranges)} unreadable source ranges ({total} bytes); "
                 "they are restored as zeros")
        if args.partition is not None:
            return _partition(args, reader, throttle)
        if is_block_device(args.target) and partition_table_of(reader) is not None:
            return _disk(args, reader, throttle)
        return _plain(args, reader, throttle)


def _plain(args: argparse.Namespace, reader: ImageReader, throttle: Throttle | None) -> int:
    from ..ops.restore import restore
    from ..progress import Throttled

    def confirm() -> bool:
        if args.yes:
            return True
        _need_terminal(args.target)
        name = _show_target(args.target)
        return _confirm(args.target, name, f"{args.target} with {human_bytes(reader.size)}")

    with ProgressBar(output_label="written") as bar:
        throttled = Throttled(bar)
        result = restore(reader, args.target, force=args.force, confirm=confirm, threads=args.threads,
                         verify=args.verify, progress=throttled, continue_on_error=args.continue_on_error,
                         free=_free(args), throttle=throttle)
        throttled.flush()
    summary = {
        "target": result.target, "device": result.is_device, "bytes": result.bytes_total,
        "bytes_written": result.bytes_written, "holes": result.holes, "seconds": round(result.elapsed, 3),
        "digests": result.digests, "corrupt": [vars(c) for c in result.corrupt],
    }
    if args.json:
        print_json(summary)
    else:
        stdout.print(f"restored {human_bytes(result.bytes_total)} to {result.target} in {result.elapsed:.1f} s "
                     f"({human_bytes(result.bytes_written)} written, {result.holes} zero chunks "
                     + ("left as holes)" if not result.is_device else "zeroed)"))
        for name, d in result.digests.items():
            stdout.print(f"{name:<8} {d['actual']} ok")
    return _report_corrupt(result.corrupt)


def _disk(args: argparse.Namespace, reader: ImageReader, throttle: Throttle | None) -> int:
    from ..ops.restore_disk import plan_disk_restore, run_disk_restore
    from ..progress import Throttled

    plan = plan_disk_restore(reader, args.target, allow_smaller=args.allow_smaller, force=args.force,
                             new_ids=args.new_ids)
    if not args.yes:
        _need_terminal(args.target)
        _show_target(args.target)
        _show_plan(plan, args.image)
        _confirm(args.target, plan.target.name, f"every partition on {args.target}")
    if args.yes:
        for line in plan.differences:
            warn(f"the target differs from the backup: {line}")
    with ProgressBar(output_label="written") as bar:
        throttled = Throttled(bar)
        result = run_disk_restore(plan, free=_free(args), verify=args.verify, continue_on_error=args.continue_on_error,
                                  threads=args.threads, throttle=throttle, progress=throttled)
        throttled.flush()
    summary = {"target": result.target, "bytes": result.bytes_total, "bytes_written": result.bytes_written,
               "bytes_zeroed": result.bytes_zeroed, "bytes_free_skipped": result.bytes_free,
               "table_rewritten": result.table_rewritten, "size_change": plan.size_change,
               "seconds": round(result.elapsed, 3), "corrupt": [vars(c) for c in result.corrupt],
               "verified": [vars(c) for c in result.checks]}
    if args.json:
        print_json(summary)
    else:
        stdout.print(f"restored disk {args.image} to {result.target} in {result.elapsed:.1f} s: "
                     f"{human_bytes(result.bytes_written)} written, {human_bytes(result.bytes_free)} of free space "
                     f"skipped, partition table {'rewritten for the target' if plan.table.gpt else 'kept'}")
        for c in result.checks:
            stdout.print(f"partition {c.number:<3} {c.method} {c.actual or 'equal to the image'} ok")
    return _report_corrupt(result.corrupt)


def _partition(args: argparse.Namespace, reader: ImageReader, throttle: Throttle | None) -> int:
    from ..ops.restore_partition import restore_partition
    from ..progress import Throttled

    def confirm(part: Partition) -> bool:
        if args.yes:
            return True
        _need_terminal(args.target)
        name = _show_target(args.target)
        return _confirm(args.target, name, f"{args.target} with partition {part.number} ({human_bytes(part.length)})")

    with ProgressBar(output_label="written") as bar:
        throttled = Throttled(bar)
        result = restore_partition(reader, args.partition, args.target, force=args.force, confirm=confirm,
                                   free=_free(args), verify=args.verify, continue_on_error=args.continue_on_error,
                                   threads=args.threads, throttle=throttle, progress=throttled)
        throttled.flush()
    if args.json:
        print_json({"target": result.target, "partition": result.partition.number, "device": result.is_device,
                    "bytes": result.partition.length, "bytes_written": result.bytes_written,
                    "seconds": round(result.elapsed, 3), "corrupt": [vars(c) for c in result.corrupt],
                    "verified": [vars(c) for c in result.checks]})
    else:
        stdout.print(f"restored partition {result.partition.number} ({human_bytes(result.partition.length)}) to "
                     f"{result.target} in {result.elapsed:.1f} s ({human_bytes(result.bytes_written)} written)")
        for c in result.checks:
            stdout.print(f"partition {c.number:<3} {c.method} {c.actual or 'equal to the image'} ok")
    return _report_corrupt(result.corrupt)
