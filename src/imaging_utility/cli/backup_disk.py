"""``backup-disk DISK [DISK…] DIR``: a backup set — one used-only whole-disk image per disk plus a manifest."""

from __future__ import annotations

import argparse
import os
import signal
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_PARTIAL, UsageError
from ..format import c_image as c
from ..image.digests import DEFAULT, parse_hash_names
from .output import ProgressBar, human_bytes, parse_size, print_json, stdout, thread_count, warn

if TYPE_CHECKING:  # imported when the command runs (every command module loads at start-up)
    from ..ops.backup import BackupResult

EXAMPLES = """
examples:
  imaging-utility backup-disk /dev/sda /backups/2024-06-01
  imaging-utility backup-disk /dev/sda /dev/nvme0n1 /mnt/usb/server1       # two disks, one set
  imaging-utility backup-disk --resume /dev/sda /dev/nvme0n1 /mnt/usb/server1   # after Ctrl-C or a crash
  imaging-utility backup-disk --split-size 4G --level 6 /dev/sda /mnt/usb/sda-set
  imaging-utility backup-disk --rescue /dev/sdc /backups/failing            # keep going past bad sectors
  imaging-utility info /backups/2024-06-01                 # every disk, its partitions, used bytes
  imaging-utility restore /backups/2024-06-01 /dev/sdb     # onto a disk of the same, larger or smaller size
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser(
        "backup-disk", parents=[parent], help="back up whole disks (used data only) into a backup set",
        description="Back up each DISK (block device or disk-image file) into DIR/<name>.img.zst: one image per "
        "disk in which every partition with a known filesystem (NTFS, ext2/3/4, FAT, exFAT, XFS, Btrfs, the LVs "
        "of an LVM2 PV, Linux swap) holds only its used blocks and everything else (MBR, boot-loader gaps, GPT "
        "copies, unknown partitions) is kept in full; plus DIR/backup.manifest.json describing the disks, "
        "tables and partitions. Each image "
        "is a plain zstd stream of the disk: 'zstd -dc IMAGE | dd of=DISK' restores it without this tool.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", metavar="DISK… DIR", nargs="+", help="one or more disks, then the set directory")
    p.add_argument("--chunk-size", default="1M", metavar="SIZE", help="bytes per chunk (default 1M; 64K..256M)")
    p.add_argument("--level", type=int, default=c.DEFAULT_LEVEL, help="zstd level 1..22 (default 3)")
    p.add_argument("--threads", type=thread_count, default=os.cpu_count() or 2,
                   help="compression threads (default: number of CPUs)")
    p.add_argument("--split-size", metavar="SIZE", help="cut each image into parts NAME.001, NAME.002, … of SIZE")
    p.add_argument("--hash", default=",".join(DEFAULT), metavar="LIST",
                   help=f"digests of each image and partition: sha256,blake3,md5 or none (default {','.join(DEFAULT)})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="replace an existing set in DIR")
    g.add_argument("--resume", action="store_true",
                   help="continue the set in DIR: finished disks are kept, the one in progress continues")
    reads = p.add_mutually_exclusive_group()
    reads.add_argument("--direct", action="store_true",
                       help="every read with O_DIRECT (by default only whole-chunk reads bypass the page cache)")
    reads.add_argument("--buffered", action="store_true",
                       help="every read through the page cache (for a device that is slow or wrong with O_DIRECT)")
    p.add_argument("--rescue", action="store_true",
                   help="keep going past unreadable sectors (zero-filled, recorded, exit 3)")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="with --rescue: extra attempts per sector")
    p.add_argument("--max-throughput", metavar="RATE", help="cap the read rate over all disks, e.g. 100M")
    p.add_argument("--allow-mounted", action="store_true",
                   help="back up a disk with a partition mounted read-write anyway (may be inconsistent)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return ["backup-disk"]


def summary(result: BackupResult) -> dict[str, Any]:
    return {
        "set": result.set_dir, "manifest": result.manifest, "seconds": round(result.elapsed, 3),
        "source_bytes": result.source_bytes, "image_bytes": result.image_bytes,
        "throughput_mib_s": round(result.source_bytes / max(result.elapsed, 1e-9) / 2**20, 1),
        "disks": [{"name": d.name, "source": d.source, "image": d.image, "kept_from_earlier_run": d.kept,
                   "size": d.entry.get("size"), "image_bytes": d.entry.get("image_bytes"),
                   "used_bytes": d.entry.get("used_bytes"), "digests": d.entry.get("digests"),
                   "partitions": [{k: p.get(k) for k in ("number", "start", "length", "type", "filesystem",
                                                         "used_bytes", "kept", "digests")}
                                  for p in d.entry.get("partitions", [])],
                   "bad_ranges": d.entry.get("bad_ranges"), "warnings": d.warnings} for d in result.disks],
    }


def run(args: argparse.Namespace) -> int:
    from ..devices.throttle import parse_rate
    from ..ops.backup import BackupOptions, backup_disks
    from ..ops.capture import CaptureOptions
    from ..progress import Throttled

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if len(args.paths) < 2:
        raise UsageError("give at least one DISK and the set directory DIR")
    *disks, set_dir = args.paths
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    opts = BackupOptions(
        capture=CaptureOptions(
            chunk_size=parse_size(args.chunk_size, "--chunk-size"), level=args.level, threads=args.threads,
            split_size=parse_size(args.split_size, "--split-size") if args.split_size else None,
            digests=parse_hash_names(args.hash), force=args.force, resume=args.resume),
        rescue=args.rescue, retries=args.retries, direct=args.direct, buffered=args.buffered,
        max_throughput=parse_rate(args.max_throughput) if args.max_throughput else None,
        allow_mounted=args.allow_mounted)
    with ProgressBar() as bar:
        throttled = Throttled(bar)
        result = backup_disks(disks, set_dir, opts, progress=throttled, on_warning=warn)
        throttled.flush()
    if args.json:
        print_json(summary(result))
    else:
        for d in result.disks:
            e = d.entry
            ratio = f" ({e['image_bytes'] / e['size'] * 100:.1f}%)" if e.get("size") else ""
            stdout.print(f"{d.name:<10} {d.source} → {os.path.join(set_dir, d.image[0])}"
                         + (" (kept from the earlier run)" if d.kept else ""), markup=False)
            stdout.print(f"{'':<10} {human_bytes(e['size'])} disk, {human_bytes(e.get('used_bytes') or 0)} stored, "
                         f"image {human_bytes(e['image_bytes'])}{ratio}; {len(e.get('partitions', []))} partitions",
                         markup=False)
        s = summary(result)
        stdout.print(f"set        {result.manifest}, {human_bytes(result.source_bytes)} in {result.elapsed:.1f} s "
                     f"({s['throughput_mib_s']} MiB/s)", markup=False)
    if result.bad_ranges:
        warn(f"{result.bad_ranges} unreadable ranges were zero-filled and recorded; 'info' lists them")
        return EXIT_PARTIAL
    return 0
