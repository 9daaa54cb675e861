"""CRC-32C (Castagnoli), as XFS and Btrfs metadata use it: the standard one (init and final XOR ~0).

dissect.util ships a native implementation (a pure-Python one runs at ~1 MB/s; the metadata of a
large volume is tens of MB).  Imported on first use: only XFS and Btrfs need it.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _impl() -> Any:
    from dissect.util.hash import crc32c

    return crc32c


def crc32c(data: bytes | bytearray | memoryview) -> int:
    return int(_impl().update(0, bytes(data)))
