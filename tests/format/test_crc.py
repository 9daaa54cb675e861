"""The frame CRC-32 is zlib's value whichever implementation computes it."""

from __future__ import annotations

import os
import zlib

import pytest

from imaging_utility.format import crc


@pytest.mark.parametrize("size", [0, 1, 7, 64, 4095, 4096, 65_537, 4 << 20])
def test_crc32_is_zlibs(size: int) -> None:
    data = os.urandom(size)
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(memoryview(bytearray(data))) == zlib.crc32(data)


def test_check_value_and_isal_in_use() -> None:
    assert crc.crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value
    # isal is a dependency: the fast implementation must be the one a normal installation uses
    assert crc.IMPLEMENTATION == "isal"
