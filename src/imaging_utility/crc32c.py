"""CRC-32C (Castagnoli), as XFS and Btrfs metadata and Btrfs data checksums use it: the standard one
(init and final XOR ~0).

google-crc32c computes it with the CPU's CRC instructions (GB/s); where its C extension is missing it
would fall back to pure Python, and dissect.util's native table-driven one (~70 MB/s) is used instead.
A pure-Python one runs at ~1 MB/s.  The implementation is picked on first use: only XFS and Btrfs need it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable


@functools.cache
def _google() -> Callable[[bytes], int] | None:
    try:
        with warnings.catch_warnings():  # it warns when it falls back to pure Python
            warnings.simplefilter("ignore")
            import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None  # type: ignore[no-any-return]


@functools.cache
def function() -> Callable[[bytes], int]:
    """The implementation itself (``bytes`` in, the CRC out), for loops over many small blocks."""
    fast = _google()
    if fast is not None:
        return fast
    from dissect.util.hash import crc32c

    return functools.partial(crc32c.update, 0)


@functools.cache
def _extend() -> Callable[[int, bytes], int]:
    fast = _google()
    if fast is not None:
        import google_crc32c

        return google_crc32c.extend  # type: ignore[no-any-return]
    from dissect.util.hash import crc32c

    return crc32c.update  # type: ignore[no-any-return]


def raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """The CRC register after ``data`` from ``seed``, with no inversions: the kernel's ``crc32c(seed, p,
    len)``, as ext4's metadata checksums use it (``ext4_chksum``)."""
    return ~_extend()(~seed & 0xFFFFFFFF, bytes(data)) & 0xFFFFFFFF


def describe() -> str:
    """Which implementation computes CRC-32C, for ``--version``."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "(version unknown)"

    if _google() is not None:
        return f"google-crc32c {version('google-crc32c')} (CPU instructions)"
    return (f"dissect.util {version('dissect.util')} (table-driven: XFS and Btrfs checksums run slower; "
            "google-crc32c's C extension is missing)")


def crc32c(data: bytes | bytearray | memoryview) -> int:
    return int(function()(bytes(data)))
