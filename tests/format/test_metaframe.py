from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging_utility.errors import CorruptImageError
from imaging_utility.format import c_image as c
from imaging_utility.format.metaframe import Event, Header, Trailer


def test_header_golden_bytes() -> None:
    h = Header(chunk_size=1 << 20, source_size=12345, sector_size=512, flags=0, meta={"a": 1})
    frame = h.encode()
    magic, size = struct.unpack_from("<II", frame)
    assert magic == 0x184D2A51 and size == len(frame) - 8
    body = frame[8:]
    assert body[:8] == b"IMGUTHDR"
    assert struct.unpack_from("<HHIIIQII", body, 8) == (2, 0, 0, 1 << 20, 512, 12345, 1, 0)
    assert body[40:48] == b"META" + struct.pack("<I", len(b'{"a": 1}'))
    assert body[48:56] == b'{"a": 1}'
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])


def test_header_roundtrip_with_allocation() -> None:
    h = Header(1 << 20, 10 << 20, 4096, c.HEADER_FLAG_USED_ONLY, {"x": "ü"}, allocation=b"\x01" * 32)
    back = Header.decode(h.encode()[8:])
    assert back == h and back.used_only


@given(st.integers(min_value=8, max_value=200), st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_header_is_detected(pos: int, bit: int) -> None:
    frame = bytearray(Header(1 << 20, 999, meta={"created": "now", "tool": "x"}).encode())
    pos = pos % (len(frame) - 8) + 8
    frame[pos] ^= 1 << bit
    with pytest.raises(CorruptImageError):
        Header.decode(bytes(frame[8:]))


def test_unknown_major_version_refused_minor_accepted() -> None:
    body = bytearray(Header(1 << 20, 5).encode()[8:-4])
    struct.pack_into("<H", body, 8, 3)
    with pytest.raises(CorruptImageError, match=r"format version 3\.0"):
        Header.decode(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    struct.pack_into("<HH", body, 8, 2, 7)
    assert Header.decode(bytes(body) + struct.pack("<I", zlib.crc32(body))).version_minor == 7


def test_unknown_sections_are_skipped() -> None:
    h = Header(1 << 20, 5, meta={"k": 1})
    body = bytearray(h.encode()[8:-4])
    struct.pack_into("<I", body, 32, 2)  # section_count
    body += b"ZZZZ" + struct.pack("<I", 3) + b"abc"
    back = Header.decode(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    assert back.meta == {"k": 1}


def test_trailer_and_event_roundtrip() -> None:
    t = Trailer(100, 1, {"digests": {"sha256": "00"}}, [(512, 1024)])
    assert Trailer.decode(t.encode()[8:]) == t
    e = Event(7, [(0, 512), (4096, 512)])
    assert Event.decode(e.encode()[8:]) == e
    frame = bytearray(e.encode())
    frame[-6] ^= 0x40
    with pytest.raises(CorruptImageError):
        Event.decode(bytes(frame[8:]))
