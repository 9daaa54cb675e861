"""``--version``: the tool, the image format, the zstd and CRC libraries (CRC-32 for frames, CRC-32C for XFS
and Btrfs) and Python, computed only when asked.

Imported without argparse: ``main`` answers a lone ``--version`` before building the parser."""

from __future__ import annotations

import sys

from .. import __version__
from ..format import c_image


def version_lines() -> list[str]:
    import platform

    import zstandard

    from .. import crc32c
    from ..format import crc

    zstd = ".".join(str(n) for n in zstandard.ZSTD_VERSION)
    build = "standalone executable" if getattr(sys, "frozen", False) else sys.executable
    return [
        f"imaging-utility {__version__}",
        f"image format {c_image.FORMAT_VERSION_MAJOR}.{c_image.FORMAT_VERSION_MINOR} (seekable zstd)",
        f"zstd {zstd} (python-zstandard {zstandard.__version__})",
        f"CRC-32 {crc.describe()}",
        f"CRC-32C {crc32c.describe()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}, {platform.machine()}, {build})",
    ]
