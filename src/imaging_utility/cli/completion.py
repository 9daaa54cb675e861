"""``completion bash|zsh|fish``: the shell completion script, generated from the parser (``docgen.py``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

SHELLS = ("bash", "zsh", "fish")

EXAMPLES = """\
examples:
  imaging-utility completion bash > /etc/bash_completion.d/imaging-utility
  imaging-utility completion zsh > /usr/local/share/zsh/site-functions/_imaging-utility
  imaging-utility completion fish > ~/.config/fish/completions/imaging-utility.fish
  source <(imaging-utility completion bash)            # this bash session only
"""


def register(subparsers: Any, parent: argparse.ArgumentParser) -> list[str]:
    p = subparsers.add_parser(
        "completion", parents=[parent], help="print the shell completion script for bash, zsh or fish",
        description="Print the completion script for SHELL on stdout: commands, options, option values "
                    "and file names. The .deb package installs all three.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
    return ["completion"]


def run(args: argparse.Namespace) -> int:
    from .docgen import completion_script
    from .parser import build_parser

    parser, _ = build_parser()
    sys.stdout.write(completion_script(parser, args.shell))
    return 0
