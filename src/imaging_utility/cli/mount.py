"""``mount``: an image's raw bytes (``disk.raw``) and partitions (``pN.raw``) as read-only FUSE files.

FUSE via libfuse 3 (``serve/fuse.py``).  Background mode re-runs this command in a detached child with
``--foreground`` and waits until the mount is live, so errors still reach the terminal and no fork
happens inside a process that already runs threads.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_INTERNAL, NotFoundError, RefusedError
from ._source_args import add_set_options, open_reader, warn_table

EXAMPLES = """\
examples:
  imaging-utility mount disk.img.zst /mnt/img
      /mnt/img/disk.raw is the whole disk, /mnt/img/p1.raw, p2.raw, ... its partitions,
      /mnt/img/vg0-root.raw, ... the logical volumes of an LVM2 physical volume in it
  mount -o ro,loop /mnt/img/p2.raw /mnt/windows      # ntfs-3g, ext4, vfat, ...
  umount /mnt/windows && fusermount3 -u /mnt/img
  imaging-utility mount disk.img.zst /mnt/img -f     # stay in the foreground; Ctrl-C unmounts
  imaging-utility mount disk.img.zst /mnt/img --partition 2 --allow-other
"""

if TYPE_CHECKING:
    from ..blocks import BlockSource

MOUNT_WAIT = 30.0  # seconds the background parent waits for the child's mount to appear


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = subparsers.add_parser(
        "mount", parents=[parent], help="FUSE-mount an image's raw disk and partitions as read-only files",
        description="Mount an image read-only with FUSE: MOUNTPOINT/disk.raw holds the whole disk and "
                    "MOUNTPOINT/pN.raw each partition (Linux numbering), ready for 'mount -o ro,loop'. "
                    "Unmount with 'fusermount3 -u MOUNTPOINT' (or Ctrl-C with --foreground).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="image to mount")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    p.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground until unmounted")
    p.add_argument("--partition", type=int, action="append", metavar="N",
                   help="expose only partition N as pN.raw (repeatable; default: all partitions)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users (and root, for loop mounts by a non-root user) read the files; "
                        "needs user_allow_other in /etc/fuse.conf unless run as root")
    add_set_options(p)
    return ["mount"]


def select_files(image: BlockSource, partitions: list[int] | None) -> dict[str, BlockSource]:
    from ..ops.volumes import named_volumes
    from ..partitions import read_partitions

    table = read_partitions(image)  # the disk and each volume in it, by its Linux name (ops.volumes)
    files = {"disk.raw": image, **{f"{name}.raw": v for name, v in named_volumes(image, table).items()}}
    if partitions:
        from ..filesystems.imsm import check_table

        for number in partitions:  # NotFoundError listing the partitions that exist; a RAID member's refused
            check_table(image, table.get(number).end)
        from ..filesystems.lvm_source import logical_volumes

        keep = {"disk.raw", *(f"p{n}.raw" for n in partitions)}
        keep |= {f"{lv}.raw" for n in partitions for lv in logical_volumes(files[f"p{n}.raw"])}
        if any(table.get(n).dynamic for n in partitions):  # a dynamic partition: the disk group's volumes
            keep |= {name for name in files if name.startswith("ldm_vol_")}
        files = {name: src for name, src in files.items() if name in keep}
    return files


def _check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise NotFoundError(f"mount point does not exist or is not a directory: {path}")
    if os.path.ismount(path):
        raise RefusedError(f"{path} is already a mount point (unmount it first: fusermount3 -u {path})")


def run(args: argparse.Namespace) -> int:
    _check_mountpoint(args.mountpoint)
    if not args.foreground:
        return _run_background(args.mountpoint)
    from ..serve.fuse import mount, require_fuse

    require_fuse()
    with open_reader(args) as image:
        warn_table(image)
        files = select_files(image, args.partition)
        print(f"mounting {args.image} at {args.mountpoint} ({', '.join(files)}); "
              f"Ctrl-C or 'fusermount3 -u {args.mountpoint}' to unmount", file=sys.stderr, flush=True)
        mount(files, args.mountpoint, allow_other=args.allow_other, debug=False)
    return 0


def _run_background(mountpoint: str) -> int:
    """Start ``<this command> --foreground`` detached; return once the mount is live or the child failed."""
    import subprocess
    import tempfile
    import time

    argv = [sys.executable, *sys.orig_argv[1:], "--foreground"]
    with tempfile.TemporaryFile(mode="w+") as errors:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                 start_new_session=True, close_fds=True)
        deadline = time.monotonic() + MOUNT_WAIT
        while time.monotonic() < deadline:
            if os.path.ismount(mountpoint):
                print(f"mounted at {mountpoint} (pid {child.pid}); unmount with: fusermount3 -u {mountpoint}")
                return 0
            code = child.poll()
            if code is not None:
                errors.seek(0)
                sys.stderr.write(errors.read())
                return code or EXIT_INTERNAL
            time.sleep(0.05)
        child.terminate()
        errors.seek(0)
        sys.stderr.write(errors.read())
    raise RefusedError(f"the FUSE mount at {mountpoint} did not appear within {MOUNT_WAIT:.0f} s")
