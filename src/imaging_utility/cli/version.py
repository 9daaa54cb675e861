"""``--version``: the tool, the image format, the zstd library and Python, computed only when asked."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..format import c_image


def version_lines() -> list[str]:
    import platform

    import zstandard

    zstd = ".".join(str(n) for n in zstandard.ZSTD_VERSION)
    build = "standalone executable" if getattr(sys, "frozen", False) else sys.executable
    return [
        f"imaging-utility {__version__}",
        f"image format {c_image.FORMAT_VERSION_MAJOR}.{c_image.FORMAT_VERSION_MINOR} (seekable zstd)",
        f"zstd {zstd} (python-zstandard {zstandard.__version__})",
        f"Python {platform.python_version()} ({platform.python_implementation()}, {platform.machine()}, {build})",
    ]


class VersionAction(argparse.Action):
    """Like argparse's ``version`` action, but imports zstandard only when ``--version`` is given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write("\n".join(version_lines()) + "\n")
        parser.exit()
