"""``export IMAGE OUT``: an image (or one partition or window of it) as a VHDX, VHD, qcow2, VMDK or raw disk."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import UsageError
from ._source_args import add_set_options
from .output import ProgressBar, human_bytes, parse_size, print_json, stdout, warn

# Kept here, not imported from export/: the parser is built at start-up and must stay light
# (tests/export/test_export_cli.py checks the names match export.FORMATS).
FORMATS = {
    "vhdx": "VHDX, dynamic (Hyper-V, Windows)",
    "vhdx-fixed": "VHDX, fixed size",
    "vhd": "VHD, dynamic (Hyper-V generation 1, Virtual PC, XenServer)",
    "vhd-fixed": "VHD, fixed size (Azure with --azure)",
    "qcow2": "qcow2 v3 (QEMU/KVM, Proxmox, libvirt, OpenStack); --compress for zstd clusters",
    "vmdk": "VMDK monolithicSparse (VMware Workstation/Player/Fusion, VirtualBox)",
    "vmdk-stream": "VMDK streamOptimized (OVF/OVA import into ESXi/vSphere, ovftool)",
    "raw": "raw disk bytes, as a sparse file",
}
EXTENSIONS = {".vhdx": "vhdx", ".vhd": "vhd", ".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw"}

EXAMPLES = """
formats:
""" + "".join(f"  {name:<12} {text}\n" for name, text in FORMATS.items()) + """
examples:
  imaging-utility export sda.img.zst sda.vhdx                  # Hyper-V (format from the name)
  imaging-utility export sda.img.zst sda.vhd --azure           # Azure: fixed VHD, N MiB + 512 bytes
  imaging-utility export sda.img.zst sda.qcow2 --compress      # Proxmox/KVM, zstd-compressed clusters
  imaging-utility export sda.img.zst sda.vmdk --format vmdk-stream   # OVF/OVA import into ESXi
  imaging-utility export sda.img.zst sda.vhdx --logical-sector 4096 --block-size 1M
  imaging-utility export sda.img.zst part2.raw --partition 2   # one partition as a sparse raw file
  imaging-utility export server.img.zst root.qcow2 --volume vg0-root   # an LVM2 logical volume as a VM disk
  imaging-utility export --json sda.img.zst.001 sda.vmdk       # a split image; summary as JSON
  imaging-utility export /backups/server1 sda.vhdx --disk sda  # one disk of a backup-disk set
  imaging-utility export s3://bucket/sda.img.zst sda.qcow2     # an image on S3, read in place
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("export", parents=[parent], help="export an image as a VHDX, VHD, qcow2, VMDK or raw disk",
                       description="Write the disk (or one partition or window) inside IMAGE as a virtual disk "
                       "file for Hyper-V, Azure, Proxmox/KVM, VMware or VirtualBox. Zero and unused ranges "
                       "are never read and take no space in dynamic formats. OUT is written as OUT.partial "
                       "and renamed when complete.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE",
                   help="image file (a split image: NAME.001 or NAME; s3://bucket/key), or a backup set directory")
    p.add_argument("out", metavar="OUT", help="file to write")
    p.add_argument("-f", "--format", metavar="F",
                   help=f"one of {', '.join(FORMATS)} (default: from OUT's extension, "
                        f"{', '.join(f'{k}={v}' for k, v in EXTENSIONS.items())})")
    p.add_argument("--block-size", metavar="N",
                   help="VHDX block (1M-256M, power of two; default 32M), VHD block (512K or 2M; default 2M), "
                        "qcow2 cluster (512-2M; default 64K), VMDK grain (8K-64K; default 64K)")
    p.add_argument("--logical-sector", type=int, metavar="512|4096",
                   help="VHDX logical sector size (default: the source's)")
    p.add_argument("--azure", action="store_true",
                   help="VHD for Azure: fixed, size rounded up to a whole MiB (at least 20 MiB, at most 32 TiB)")
    p.add_argument("--compress", action="store_true", help="qcow2: zstd-compressed clusters")
    p.add_argument("--partition", type=int, metavar="N", help="export only partition N (Linux numbering)")
    p.add_argument("--volume", metavar="NAME", help="export only the volume serve-proxy exports by this name "
                   "(vg0-root, ldm_vol_GROUP_NAME, imsm_NAME, imsm_NAMEp1, p2)")
    p.add_argument("--offset", metavar="N", help="export a window starting at byte N (K/M/G suffixes)")
    p.add_argument("--length", metavar="N", help="window length (default: to the end)")
    p.add_argument("--threads", type=int, help="decoding/compressing threads (default: number of CPUs)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_set_options(p)
    return ["export"]


def _format(args: argparse.Namespace) -> str:
    if args.format:
        fmt = str(args.format).lower()
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {args.format!r}: use one of {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(args.out)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    raise UsageError(f"cannot tell the format from the name {args.out!r}: add --format (one of {', '.join(FORMATS)})")


def run(args: argparse.Namespace) -> int:
    from ..ops.export import export, open_export_source
    from ..progress import Throttled

    fmt = _format(args)
    block_size = parse_size(args.block_size, "--block-size") if args.block_size else None
    offset = parse_size(args.offset, "--offset") if args.offset is not None else None
    length = parse_size(args.length, "--length") if args.length is not None else None
    src = open_export_source(args.image, disk=args.disk, partition=args.partition, offset=offset, length=length,
                             volume=args.volume)
    try:
        if src.bad_ranges:
            total = sum(n for _, n in src.bad_ranges)
            warn(f"the image has {len(src.bad_ranges)} unreadable source ranges ({total} bytes) in what is "
                 "exported; they are exported as zeros")
        with ProgressBar(enabled=None if not args.json else False, output_label="written") as bar:
            throttled = Throttled(bar)
            result = export(src, args.out, fmt, block_size=block_size, logical_sector=args.logical_sector,
                            azure=args.azure, compress=args.compress, threads=args.threads, force=args.force,
                            progress=throttled)
            throttled.flush()
    finally:
        src.close()
    for note in result.notes:
        warn(note)
    if args.json:
        print_json(result.to_json())
        return 0
    d = result.details
    unit = next((f"{human_bytes(d[k])} {k.split('_')[0]}s" for k in ("block_size", "cluster_size", "grain_size")
                 if k in d), "")
    stdout.print(f"exported {human_bytes(result.virtual_size)} to {result.out} ({result.format}"
                 f"{', ' + unit if unit else ''}) in {result.elapsed:.1f} s: file {human_bytes(result.file_size)}, "
                 f"{human_bytes(result.allocated_bytes)} on disk, {human_bytes(result.nonzero_bytes)} of data")
    stdout.print(f"id {result.identity['id']}")
    return 0
