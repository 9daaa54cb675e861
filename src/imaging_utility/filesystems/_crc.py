"""CRC-32C (Castagnoli), as XFS and Btrfs metadata use it: the standard one (init and final XOR ~0).

dissect.util ships a native implementation (the pure-Python fallback is ~1 MB/s; metadata of a
large volume is tens of MB), which is why it is taken from there.
"""

from __future__ import annotations

from dissect.util.hash import crc32c as _crc32c


def crc32c(data: bytes | bytearray | memoryview) -> int:
    return int(_crc32c.update(0, bytes(data)))
