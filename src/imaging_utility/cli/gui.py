"""``gui``: the terminal dashboard (Textual): pick a disk, image it, watch it live, pause and resume it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError

EXAMPLES = """
examples:
  imaging-utility gui                                  # pick a disk, image / verify / restore, watch it live
  imaging-utility gui /dev/sdb                         # straight to the image form for /dev/sdb
  imaging-utility gui sdb.img.zst                      # verify or restore this image
  imaging-utility gui --log-file /var/log/imaging.log  # also log every job to a file ('l' toggles it)
  ssh -t rescue-host imaging-utility gui               # over SSH: -t gives it a terminal
"""


def register(sub: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = sub.add_parser("gui", parents=[parent], help="terminal dashboard: pick a source, watch the job, pause/resume",
                   description="A terminal user interface: pick a disk or partition (or open an image or "
                   "backup set), choose image / verify / restore with the command's options, then watch "
                   "throughput, ETA, compression, workers and the bottleneck live; pause, resume or cancel. "
                   "Keys are shown at the bottom of each screen.",
                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="start with this disk or partition (its image form) or image / backup set (its operations)")
    return ["gui"]


def run(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("gui needs an interactive terminal (stdin and stdout are not a TTY); "
                         "run it in a terminal or over 'ssh -t', or use the commands directly")
    from ..gui.app import ImagingApp  # without Textual, main() names the package to install
    app = ImagingApp(log_file=args.log_file, initial=args.path)
    code = app.run()
    return int(code or 0)
