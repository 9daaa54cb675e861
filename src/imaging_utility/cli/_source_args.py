"""One place for "which image": an image file, or one disk of a backup set, and one of its partitions.

Every command that reads an image takes ``--set-dir DIR [--disk NAME]`` (and ``--partition N``):
``--set-dir DIR`` is the same as giving the set directory where IMAGE goes, so ``main`` rewrites it to
that before parsing (``rewrite_set_dir``) and each command keeps its own positional arguments.  A set
directory given as IMAGE works too.  The set is checked against its manifest when opened
(``ops.manifest``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import Error
from .output import warn

if TYPE_CHECKING:  # imported when used: command modules are all loaded at start-up
    from ..blocks import BlockSource
    from ..image.reader import ImageReader

#: Commands whose first positional argument is an image (or a set directory).
SET_COMMANDS = frozenset({"info", "verify", "restore", "serve-proxy", "mount", "ls", "extract", "webdav",
                          "ntfs-extract", "ntfs-webdav", "ntfs-serve"})


def add_set_options(p: argparse.ArgumentParser, *, partition: bool = False) -> None:
    """``--set-dir``, ``--disk`` and (when the command has none yet) ``--partition``."""
    p.add_argument("--set-dir", metavar="DIR", help="a backup set made by backup-disk, in place of IMAGE")
    p.add_argument("--disk", metavar="NAME", help="the disk of the set to use (needed when it holds several)")
    if partition:
        p.add_argument("--partition", type=int, metavar="N",
                       help="partition N of a whole-disk image (Linux numbering, as 'info' lists them)")


def rewrite_set_dir(argv: list[str]) -> list[str]:
    """``CMD … --set-dir DIR …`` → ``CMD DIR …`` for the commands in ``SET_COMMANDS``."""
    command = next((i for i, a in enumerate(argv) if a in SET_COMMANDS), None)
    if command is None:
        return argv
    args = list(argv)
    stop = args.index("--") if "--" in args else len(args)
    for i in range(command + 1, stop):
        if args[i] == "--set-dir" and i + 1 < stop:
            value = args[i + 1]
            del args[i : i + 2]
        elif args[i].startswith("--set-dir="):
            value = args[i].split("=", 1)[1]
            del args[i]
        else:
            continue
        args.insert(command + 1, value)
        break
    return args


def open_reader(args: argparse.Namespace, **kwargs: Any) -> ImageReader:
    """The image ``args.image`` names (a file, split set, or a set directory with ``args.disk``)."""
    from ..ops.manifest import open_image_or_set

    return open_image_or_set(args.image, getattr(args, "disk", None), **kwargs)


def warn_table(source: BlockSource) -> None:
    """Say which partitions of a truncated disk image are missing or cut, and which GPT copy is used."""
    from ..partitions import read_partitions

    try:
        table = read_partitions(source)
    except Error:  # the command itself reports an unreadable source
        return
    for message in table.warnings:
        warn(message)
