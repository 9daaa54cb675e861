"""``image SOURCE DEST``: image a block device, partition or file into a compressed, verifiable image."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from ..devices.source import FileSource
from ..format import c_image as c
from ..image.digests import DEFAULT, parse_hash_names
from ..ops.capture import CaptureOptions, CaptureResult, capture
from ..progress import Throttled
from .output import ProgressBar, human_bytes, parse_size, print_json, stdout

EXAMPLES = """
examples:
  imaging-utility image /dev/sdb sdb.img.zst
  imaging-utility image --level 6 --split-size 4G /dev/nvme0n1 /mnt/backup/nvme0n1.img.zst
  imaging-utility image --resume /dev/sdb sdb.img.zst        # continue after Ctrl-C, kill or power loss
  imaging-utility image --hash sha256,md5 --json disk.raw disk.img.zst
  zstd -dc sdb.img.zst > sdb.raw                              # the image is a plain zstd stream too
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser(
        "image", parents=[parent], help="image a device, partition or file",
        description="Image SOURCE (block device, partition or regular file) into DEST: a seekable zstd "
        "stream with checksums, an index and whole-image digests. An interrupted run continues with --resume.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--chunk-size", default="1M", metavar="SIZE",
                   help="bytes per independently decodable chunk (default 1M; 64K..256M)")
    p.add_argument("--level", type=int, default=c.DEFAULT_LEVEL, help="zstd level 1..22 (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="compression threads (default: number of CPUs)")
    p.add_argument("--split-size", metavar="SIZE", help="cut the image into parts DEST.001, DEST.002, … of SIZE")
    p.add_argument("--hash", default=",".join(DEFAULT), metavar="LIST",
                   help=f"whole-image digests: sha256,blake3,md5 or none (default {','.join(DEFAULT)})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    g.add_argument("--resume", action="store_true", help="continue the partial image DEST")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return ["image"]


def file_identity(path: str, source: FileSource) -> dict[str, Any]:
    st = os.stat(path)
    return {
        "kind": "block-device" if source.is_block_device else "file",
        "path": os.path.abspath(path),
        "size": source.size,
        "mtime": None if source.is_block_device else st.st_mtime_ns,
    }


def summary(result: CaptureResult) -> dict[str, Any]:
    return {
        "image": result.paths,
        "source_size": result.source_size,
        "image_bytes": result.image_bytes,
        "ratio": round(result.image_bytes / result.source_size, 4) if result.source_size else None,
        "chunks": result.chunks,
        "zero_chunks": result.zero_chunks,
        "read_bytes": result.read_bytes,
        "used_bytes": result.used_bytes,
        "digests": result.digests,
        "seconds": round(result.elapsed, 3),
        "throughput_mib_s": round((result.source_size - result.resumed_at) / max(result.elapsed, 1e-9) / 2**20, 1),
        "resumed_at": result.resumed_at,
        "bad_ranges": [{"offset": o, "length": n} for o, n in result.bad_ranges],
    }


def print_summary(result: CaptureResult) -> None:
    s = summary(result)
    parts = result.paths
    stdout.print(f"image      {parts[0]}" + (f" … {parts[-1]} ({len(parts)} parts)" if len(parts) > 1 else ""))
    ratio = f" ({s['ratio'] * 100:.1f}% of source)" if s["ratio"] is not None else ""
    stdout.print(f"size       {human_bytes(result.source_size)} → {human_bytes(result.image_bytes)}{ratio}")
    if result.resumed_at:
        stdout.print(f"resumed at {human_bytes(result.resumed_at)}")
    stdout.print(f"time       {result.elapsed:.1f} s, {s['throughput_mib_s']} MiB/s")
    stdout.print(f"chunks     {result.chunks} ({result.zero_chunks} zero or unused this run)")
    for name, digest in result.digests.items():
        stdout.print(f"{name:<10} {digest}")


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # file-size limit: get EFBIG (exit 7), not a kill
    opts = CaptureOptions(
        chunk_size=parse_size(args.chunk_size, "--chunk-size"),
        level=args.level,
        threads=args.threads,
        split_size=parse_size(args.split_size, "--split-size") if args.split_size else None,
        digests=parse_hash_names(args.hash),
        force=args.force,
        resume=args.resume,
    )
    opts.validate()
    with FileSource(args.source) as source:
        opts.identity = file_identity(args.source, source)
        with ProgressBar() as bar:
            throttled = Throttled(bar)
            result = capture(source, args.dest, opts, throttled)
            throttled.flush()
    if args.json:
        print_json(summary(result))
    else:
        print_summary(result)
    return 0
