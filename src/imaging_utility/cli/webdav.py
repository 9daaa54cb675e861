"""``webdav``: browse the filesystem inside an image over WebDAV/HTTP.

Aliases ``ntfs-webdav``, ``ntfs-serve``, ``fat-webdav`` and ``exfat-webdav`` are the original tool's names.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import NotFoundError, UsageError
from ._source_args import warn_table
from .ls import add_source_options, tree_source_args
from .output import warn
from .serve import _is_loopback

EXAMPLES = """\
examples:
  imaging-utility webdav part1.img.zst
      then open http://127.0.0.1:18081/ in a browser, or:
      rclone copy --webdav-url http://127.0.0.1:18081/ :webdav:Documents ./Documents
      Windows: net use Z: http://127.0.0.1:18081/      (see docs/files.md for WebClient settings)
  imaging-utility webdav disk.img.zst --partition 3 --port 8080
  imaging-utility webdav --partition 2 --lv vg0/srv server.img.zst      a logical volume of an LVM2 PV
  imaging-utility webdav disk.img.zst --partition 3 --host 0.0.0.0 --user ann --password-file pw.txt
"""


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    names = []
    for name in ("webdav", "ntfs-webdav", "ntfs-serve", "fat-webdav", "exfat-webdav"):
        p = subparsers.add_parser(
            name, parents=[parent],
            help="read-only WebDAV + HTML browsing of the files in an image" if name == "webdav" else "alias of webdav",
            description="Serve the filesystem inside an image (or a partition of it) read-only over WebDAV: "
                        "browsers get an HTML listing, WebDAV clients (Windows Explorer, rclone, davfs2, "
                        "Finder) can map it as a drive. Writes are refused with 403.",
            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("image", metavar="IMAGE", help="image, raw volume file or device")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
        p.add_argument("--port", type=int, default=18081, help="TCP port (default: 18081; 0 = any free port)")
        p.add_argument("--user", metavar="U", help="require HTTP basic auth as user U")
        p.add_argument("--password-file", metavar="F", help="file whose first line is the password for --user")
        add_source_options(p)
        names.append(name)
    return names


def _users(args: argparse.Namespace) -> dict[str, str] | None:
    if (args.user is None) != (args.password_file is None):
        raise UsageError("--user and --password-file go together")
    if args.user is None:
        return None
    try:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except OSError as e:
        raise NotFoundError(f"cannot read the password file {args.password_file}: {e.strerror}") from None
    if not password:
        raise UsageError(f"the password file {args.password_file} is empty")
    return {args.user: password}


def run(args: argparse.Namespace) -> int:
    from ..ops.files import open_image_tree
    from ..serve.webdav import WebDavServer
    from ._serving import serve_until_signalled

    users = _users(args)
    tree, source = open_image_tree(args.image, **tree_source_args(args))
    if args.partition is not None:
        warn_table(source)  # a truncated disk: which partitions are cut or missing
    try:
        for message in tree.warnings:
            warn(message)
        server = WebDavServer(tree, host=args.host, port=args.port, users=users)
        if not _is_loopback(args.host):
            extra = "" if users else " and no password (use --user/--password-file)"
            print(f"imaging-utility: warning: listening on {args.host}, not loopback: anyone who can reach this "
                  f"port can read the files (plain HTTP{extra})", file=sys.stderr)
        print(f"serving {args.image} ({tree.fs_type}) read-only over WebDAV at {server.url}; Ctrl-C to stop",
              flush=True)
        try:
            if serve_until_signalled(server.serve_forever, server.stop):
                print("imaging-utility: stopped", file=sys.stderr)
        finally:
            server.stop()
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return 0
