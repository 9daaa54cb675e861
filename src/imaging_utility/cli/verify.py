"""``verify IMAGE``: check every chunk and the whole-image digests, or a random sample with --quick."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import EXIT_CORRUPT, IncompleteImageError, UsageError
from ..image.digests import parse_hash_names
from ._source_args import add_set_options, open_reader
from .output import ProgressBar, print_json, stderr, stdout, thread_count

EXAMPLES = """
examples:
  imaging-utility verify sdb.img.zst
  imaging-utility verify --quick sdb.img.zst                 # ≥ 95% sure to catch a 1% corruption
  imaging-utility verify --quick --samples 1000 sdb.img.zst
  imaging-utility verify --quick --seed 1234 --json sdb.img.zst    # repeat an earlier sample
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("verify", parents=[parent], help="check an image's chunks and digests",
                       description="Check every chunk's checksums, the index and the whole-image digests "
                       "(exit 8 on any failure, naming the chunk, its source bytes and where its frame lies in "
                       "the image file). On an interrupted image: what was captured and how to continue it.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--quick", action="store_true", help="check a random sample of chunks only")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="chunks to check with --quick (default: enough to catch a corruption of 1%% of the chunks "
                        "with 95%% probability: at most 299)")
    p.add_argument("--seed", type=int, help="random seed for --quick (printed, to repeat a run)")
    p.add_argument("--threads", type=thread_count, default=None, help="decoding threads (default: number of CPUs)")
    p.add_argument("--hash", metavar="LIST", default="",
                   help="also compute these digests (sha256, blake3, md5), e.g. the SHA-256 of an image made "
                   "without it: for a full image it equals 'sha256sum' of the source")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    add_set_options(p, partition=True)
    return ["verify"]


def run(args: argparse.Namespace) -> int:
    from ..image.verify import verify_image
    from ..ops.manifest import is_set_dir, load_manifest
    from ..progress import Throttled

    if is_set_dir(args.image) and args.disk is None:
        names = [d["name"] for d in load_manifest(args.image)["disks"]]
        if len(names) > 1:  # every disk of the set
            codes = []
            for name in names:
                stdout.print(f"[disk {name}]", markup=False)
                codes.append(run(argparse.Namespace(**{**vars(args), "disk": name})))
            return max(codes)
    if args.partition is not None:
        return _partition(args)
    try:
        reader = open_reader(args)
    except IncompleteImageError as e:
        from .partial import report_partial

        report_partial(args.image, args.json, e)
        raise
    with reader, ProgressBar(output_label="") as bar:
        throttled = Throttled(bar)
        extra = parse_hash_names(args.hash) if args.hash else ()
        if extra and args.quick:
            raise UsageError("--hash needs a full verify (every chunk); drop --quick")
        report = verify_image(reader, quick=args.quick, samples=args.samples, seed=args.seed,
                              threads=args.threads, progress=throttled, extra_digests=extra)
        throttled.flush()
    if args.json:
        print_json(report.as_dict())
    else:
        for f in report.failures:
            stderr.print(f"FAILED {f['error']}", markup=False)
        for problem in report.problems:
            stderr.print(f"FAILED {problem}")
        for name, d in report.digests.items():
            if d.get("unknown"):
                stdout.print(f"{name:<8} {d['expected']} not checked (a digest this version does not know)")
            elif d["actual"] is None:
                stdout.print(f"{name:<8} {d['expected']} not computed (chunks failed)")
            elif d["expected"] is None:
                stdout.print(f"{name:<8} {d['actual']} (computed now; not stored in the image)")
            elif d["ok"]:
                stdout.print(f"{name:<8} {d['expected']} ok")
            else:
                stdout.print(f"{name:<8} {d['expected']} MISMATCH (computed {d['actual']})")
        if report.detection:
            stdout.print(report.detection)
        if report.bad_ranges:
            total = sum(n for _, n in report.bad_ranges)
            stdout.print(f"note: {len(report.bad_ranges)} unreadable source ranges ({total} bytes) were "
                         "zero-filled when imaging; see 'info'")
        stdout.print(f"{report.chunks_checked} of {report.chunk_count} chunks checked: "
                     + ("OK" if report.ok else "FAILED"))
    return 0 if report.ok else EXIT_CORRUPT


def _partition(args: argparse.Namespace) -> int:
    """Decode (and so check) every chunk of one partition and compare its stored digest."""
    from ..ops.restore_check import verify_image_partition

    with open_reader(args) as reader:
        check = verify_image_partition(reader, args.partition)
    if args.json:
        print_json(vars(check))
    elif not check.ok:
        stderr.print(f"FAILED partition {check.number}: {check.method} {check.actual}, expected {check.expected}")
    elif check.expected:
        stdout.print(f"partition {check.number} {check.method} {check.actual} ok")
    else:
        stdout.print(f"partition {check.number}: every chunk ok (the image stores no partition digest)")
    return 0 if check.ok else EXIT_CORRUPT
