"""CRC-32 of frames (the seek table's checksums): zlib's polynomial, from ISA-L where it is installed.

ISA-L's CRC-32 (``isal``, a default dependency) runs at about 22 GiB/s on this project's 2-core
benchmark machine, zlib 1.2's at about 3 GiB/s; the capture pipeline computes one per frame, so
zlib's cost about 4% of a ``backup-disk`` run's CPU.  Both give the same value; zlib's is kept for a
platform without an ``isal`` wheel.
"""

from __future__ import annotations

from collections.abc import Callable

Crc32 = Callable[[bytes | bytearray | memoryview], int]


def _pick() -> tuple[Crc32, str]:
    try:
        from isal.isal_zlib import crc32 as isal_crc32
    except ImportError:
        import zlib

        return zlib.crc32, "zlib"
    return isal_crc32, "isal"


crc32, IMPLEMENTATION = _pick()


def describe() -> str:
    """Which implementation computes frame CRCs, for ``--version``."""
    if IMPLEMENTATION == "isal":
        import isal

        return f"ISA-L {isal.ISAL_VERSION} (python-isal {isal.__version__})"
    return "zlib (python-isal is not installed: frame checksums cost about 7 times as much CPU)"
