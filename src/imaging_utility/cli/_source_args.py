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
SET_COMMANDS = frozenset({"info", "verify", "restore", "export", "serve-proxy", "mount", "ls", "extract",
                          "webdav", "ntfs-extract", "ntfs-webdav", "ntfs-serve"})


def add_set_options(p: argparse.ArgumentParser, *, partition: bool = False) -> None:
    """``--set-dir``, ``--disk`` and (when the command has none yet) ``--partition``."""
    p.add_argument("--set-dir", metavar="DIR", help="a backup set made by backup-disk, in place of IMAGE")
    p.add_argument("--disk", metavar="NAME", help="the disk of the set to use (needed when it holds several)")
    if partition:
        p.add_argument("--partition", type=int, metavar="N",
                       help="partition N of a whole-disk image (Linux numbering, as 'info' lists them)")


def rewrite_set_dir(argv: list[str], commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``CMD [OPTIONS] --set-dir DIR [ARGS]`` → ``CMD DIR ARGS OPTIONS`` for the commands in ``SET_COMMANDS``.

    The positional arguments are gathered right after DIR because argparse fills an optional positional
    (``ls IMAGE [PATH]``) only from the first run of positionals it meets."""
    command = next((i for i, a in enumerate(argv) if a in SET_COMMANDS), None)
    if command is None or not any(a == "--set-dir" or a.startswith("--set-dir=") for a in argv[command + 1:]):
        return argv
    known = commands[argv[command]]._option_string_actions  # argparse has no public map of them
    set_dir: str | None = None
    positionals: list[str] = []
    options: list[str] = []
    rest = argv[command + 1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--":
            positionals += rest[i + 1:]
            break
        name, eq, value = token.partition("=")
        if name == "--set-dir" and set_dir is None:
            set_dir, i = (value, i + 1) if eq else (rest[i + 1] if i + 1 < len(rest) else "", i + 2)
            continue
        if token.startswith("-") and token != "-":
            action = known.get(name)
            takes_value = (action is not None and action.nargs != 0 and not eq
                           and (token.startswith("--") or len(token) == 2))  # not "--opt=x", "-p5"
            options += rest[i : i + 2] if takes_value else [token]
            i += 2 if takes_value else 1
            continue
        positionals.append(token)
        i += 1
    return [*argv[: command + 1], *([set_dir] if set_dir is not None else []), *positionals, *options]


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
