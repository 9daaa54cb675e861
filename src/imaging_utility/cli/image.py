"""``image SOURCE DEST``: image a block device, partition or file into a compressed, verifiable image."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_PARTIAL, UsageError
from ..format import c_image as c
from ..image.digests import DEFAULT, parse_hash_names
from .output import ProgressBar, human_bytes, parse_size, print_json, stderr, stdout, thread_count, warn

if TYPE_CHECKING:
    from rich.console import Console

    from ..ops.capture import CaptureResult

EXAMPLES = """
examples:
  imaging-utility image /dev/sdb sdb.img.zst
  imaging-utility image --level 6 --split-size 4G /dev/nvme0n1 /mnt/backup/nvme0n1.img.zst
  imaging-utility image --resume /dev/sdb sdb.img.zst        # continue after Ctrl-C, kill or power loss
  imaging-utility image --hash sha256,md5 --json disk.raw disk.img.zst
  imaging-utility image --used-only /dev/sdb2 windows.img.zst          # NTFS/ext/FAT/exFAT: used clusters only
  imaging-utility image --used-only /dev/sdb sdb.img.zst               # a whole disk, partition by partition
  imaging-utility image --used-only /dev/sda3 server.img.zst           # XFS, Btrfs, or an LVM2 PV (each LV's map)
  imaging-utility image --rescue --retries 3 --direct /dev/sdc failing.img.zst   # keep going past bad sectors
  imaging-utility image --max-throughput 100M /dev/sda prod.img.zst    # spare a production host
  imaging-utility image --adaptive-rate-limit /dev/sda prod.img.zst    # yield when others wait on I/O
  imaging-utility image --used-only=auto --offset 1M --length 20G disk.raw p1.img.zst
  imaging-utility image /dev/sdb - | ssh backup 'cat > sdb.img.zst'   # DEST '-': stream to stdout (no resume)
  zstd -dc sdb.img.zst > sdb.raw                              # the image is a plain zstd stream too
  imaging-utility image --used-only /dev/sdb2 s3://backups/host1/sdb2.img.zst   # straight into a bucket
  imaging-utility image --resume /dev/sdb2 s3://backups/host1/sdb2.img.zst      # continue an interrupted upload
  imaging-utility image --abort /dev/sdb2 s3://backups/host1/sdb2.img.zst       # or discard it
  AWS_PROFILE=backup imaging-utility image --endpoint-url http://seaweed:8333 /dev/sda s3://fleet/sda.img.zst
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser(
        "image", parents=[parent], help="image a device, partition or file",
        description="Image SOURCE (block device, partition or regular file) into DEST: a seekable zstd "
        "stream with checksums, an index and whole-image digests. An interrupted run continues with --resume.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST", help="image file, or - to write the image to standard output")
    p.add_argument("--chunk-size", default="1M", metavar="SIZE",
                   help="bytes per independently decodable chunk (default 1M; 64K..256M)")
    p.add_argument("--level", type=int, default=c.DEFAULT_LEVEL, help="zstd level 1..22 (default 3)")
    p.add_argument("--threads", type=thread_count, default=os.cpu_count() or 2,
                   help="compression threads (default: number of CPUs)")
    p.add_argument("--split-size", metavar="SIZE", help="cut the image into parts DEST.001, DEST.002, … of SIZE")
    p.add_argument("--hash", default=",".join(DEFAULT), metavar="LIST",
                   help=f"whole-image digests: sha256,blake3,md5 or none (default {','.join(DEFAULT)})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    g.add_argument("--resume", action="store_true", help="continue the partial image DEST")
    g.add_argument("--abort", action="store_true",
                   help="discard the partial image DEST (an interrupted s3:// upload: abort it) and exit")
    used = p.add_mutually_exclusive_group()
    used.add_argument("--used-only", dest="used_only", action="store_const", const="yes",
                      help="read only the allocated clusters of the NTFS, ext2/3/4, FAT, exFAT, XFS or Btrfs "
                      "filesystem in SOURCE, or of each logical volume of an LVM2 physical volume (unallocated "
                      "space reads back as zeros; Linux swap: its signature page); a whole disk: each partition "
                      "so, everything else in full; fails (exit 4) on anything else")
    used.add_argument("--used-only=auto", dest="used_only", action="store_const", const="auto",
                      help="the same, but image in full, with a warning, when no supported filesystem is found")
    p.add_argument("--offset", default="0", metavar="BYTES",
                   help="image only the window of SOURCE starting here (e.g. a partition inside a disk)")
    p.add_argument("--length", metavar="BYTES", help="length of that window (default: to the end of SOURCE)")
    reads = p.add_mutually_exclusive_group()
    reads.add_argument("--direct", action="store_true",
                       help="every read with O_DIRECT (by default only the whole-chunk reads of a block device "
                       "nothing has mounted read-write bypass the page cache)")
    reads.add_argument("--buffered", action="store_true",
                       help="every read through the page cache (for a device that is slow or wrong with O_DIRECT)")
    p.add_argument("--rescue", action="store_true",
                   help="keep going past unreadable sectors like GNU ddrescue: split failed reads down to the "
                   "sector, retry, zero-fill what stays unreadable and record it in the image (exit 3)")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="with --rescue: extra attempts per failed sector (default 1)")
    p.add_argument("--max-throughput", metavar="RATE",
                   help="cap the source read rate, e.g. 100M (bytes/s, K/M/G 1024-based)")
    p.add_argument("--adaptive-rate-limit", action="store_true",
                   help="read more slowly while other programs wait on I/O (/proc/pressure/io, the source's "
                   "latency), faster again when they stop; with --max-throughput, that stays the ceiling")
    p.add_argument("--allow-mounted", action="store_true",
                   help="image a source mounted read-write anyway (the image may be inconsistent)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return ["image"]


def summary(result: CaptureResult) -> dict[str, Any]:
    from ..ops.imaging import capture_summary

    return capture_summary(result)


def print_summary(result: CaptureResult, out: Console | None = None) -> None:
    out = out or stdout
    s = summary(result)
    parts = result.paths
    out.print(f"image      {parts[0]}" + (f" … {parts[-1]} ({len(parts)} parts)" if len(parts) > 1 else ""))
    ratio = f" ({s['ratio'] * 100:.1f}% of source)" if s["ratio"] is not None else ""
    out.print(f"size       {human_bytes(result.source_size)} → {human_bytes(result.image_bytes)}{ratio}")
    if result.resumed_at:
        out.print(f"resumed at {human_bytes(result.resumed_at)}")
    paused = f", {s['paused_seconds']:.1f} s of it paused" if s["paused_seconds"] else ""
    out.print(f"time       {result.elapsed:.1f} s{paused}, {s['throughput_mib_s']} MiB/s")
    out.print(f"chunks     {result.chunks} ({result.zero_chunks} zero or unused this run)")
    if result.used_bytes is not None:
        out.print(f"used-only  {human_bytes(result.used_bytes)} allocated, "
                  f"{human_bytes(result.read_bytes)} read this run")
    if s["zero_bytes"] or s["unallocated_bytes"]:
        out.print(f"skipped    {human_bytes(s['zero_bytes'])} zeros, "
                  f"{human_bytes(s['unallocated_bytes'])} unallocated")
    pacing = result.pacing
    if pacing is not None:
        out.print(f"pacing     {pacing_text(pacing)}")
    for name, digest in result.digests.items():
        out.print(f"{name:<10} {digest}")


def pacing_text(pacing: dict[str, Any]) -> str:
    if pacing["mode"] == "fixed":
        return f"held to {human_bytes(pacing['rate'])}/s (--max-throughput)"
    text = "adaptive: "
    if not pacing["reductions"]:
        return text + "never slowed down (no other program waited on I/O)"
    text += (f"slowed down {pacing['reductions']} times, {pacing['limited_seconds']} s limited, "
             f"lowest {human_bytes(pacing['lowest'])}/s; last because {pacing['last_reason']}")
    return text


def _abort(dest: str, as_json: bool) -> int:
    from ..ops.discard import discard_partial

    gone = discard_partial(dest)
    if as_json:
        print_json({"discarded": gone})
    else:
        for name in gone:
            stdout.print(f"discarded  {name}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.abort:
        return _abort(args.dest, args.json)
    from ..devices.throttle import parse_rate
    from ..ops.imaging import ImageRequest, run_image
    from ..progress import Throttled

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # file-size limit: get EFBIG (exit 7), not a kill
    piped = args.dest == "-"  # storage.local.STDOUT
    if piped and sys.stdout.isatty():
        raise UsageError("DEST '-' writes the image to standard output, which is a terminal: pipe or redirect it, "
                         "e.g. 'imaging-utility image /dev/sdb - | ssh host \"cat > sdb.img.zst\"'")
    req = ImageRequest(
        args.source, args.dest,
        chunk_size=parse_size(args.chunk_size, "--chunk-size"),
        level=args.level,
        threads=args.threads,
        split_size=parse_size(args.split_size, "--split-size") if args.split_size else None,
        digests=parse_hash_names(args.hash),
        force=args.force,
        resume=args.resume,
        used_only=args.used_only,
        offset=parse_size(args.offset, "--offset"),
        length=parse_size(args.length, "--length") if args.length else None,
        direct=args.direct,
        buffered=args.buffered,
        rescue=args.rescue,
        retries=args.retries,
        max_throughput=parse_rate(args.max_throughput) if args.max_throughput else None,
        adaptive_rate_limit=args.adaptive_rate_limit,
        allow_mounted=args.allow_mounted,
    )
    req.options()
    with ProgressBar() as bar:
        throttled = Throttled(bar)
        result = run_image(req, throttled, warn=warn)
        throttled.flush()
    if args.json and piped:
        import json

        sys.stderr.write(json.dumps(summary(result), indent=2, sort_keys=True) + "\n")
    elif args.json:
        print_json(summary(result))
    else:
        print_summary(result, stderr if piped else stdout)
    if result.bad_ranges:
        total = sum(n for _, n in result.bad_ranges)
        warn(f"{len(result.bad_ranges)} unreadable ranges ({total} bytes) were zero-filled and recorded in "
             "the image; 'info' lists them")
        return EXIT_PARTIAL
    return 0
