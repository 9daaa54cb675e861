"""Metadata frames alone (spec §3): layout, CRC, versions, flags vs sections, range lists, META schema."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging_utility.errors import CorruptImageError, UnsupportedError
from imaging_utility.format import c_image as c
from imaging_utility.format.metaframe import Event, Header, Trailer, allocation_sha256

META = {"digests": ["blake3"], "level": 3, "created": "2025-01-01T00:00:00Z"}
TMETA = {"digests": {"blake3": "ab" * 32}, "digest_covers": "all image bytes"}
AMAP = struct.pack("<QQQQ", 0, 4096, 8192, 12288)


def _rewrap(body: bytes | bytearray) -> bytes:
    """User data with a fresh CRC-32 (for crafted frames whose CRC must stay right)."""
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def _header(**kw: Any) -> Header:
    args: dict[str, Any] = {"chunk_size": 1 << 20, "source_size": 5 << 20, "meta": dict(META)}
    args.update(kw)
    return Header(**args)


def _used_meta(amap: bytes = AMAP, size: int = 5 << 20) -> dict[str, Any]:
    return {**META, "used_only": {"filesystem": {"type": "fat16"}, "used_bytes": 8192, "extents": 2,
                                  "allocation_sha256": allocation_sha256(size, amap), "cluster_size": 4096}}


def test_header_golden_bytes() -> None:
    h = Header(chunk_size=1 << 20, source_size=12345, sector_size=512, flags=0, meta={"a": 1})
    frame = h.encode()
    magic, size = struct.unpack_from("<II", frame)
    assert magic == 0x184D2A51 and size == len(frame) - 8
    body = frame[8:]
    assert body[:8] == b"IMGUTHDR"
    assert struct.unpack_from("<HHIIIQII", body, 8) == (1, 0, 0, 1 << 20, 512, 12345, 1, 0)
    assert body[40:48] == b"META" + struct.pack("<I", len(b'{"a": 1}'))
    assert body[48:56] == b'{"a": 1}'
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])


def test_header_roundtrip_with_allocation() -> None:
    h = _header(flags=c.HEADER_FLAG_USED_ONLY, meta=_used_meta(), allocation=AMAP, sector_size=4096)
    back = Header.decode(h.encode()[8:])
    assert back == h and back.used_only


@given(st.integers(min_value=8, max_value=200), st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_header_is_detected(pos: int, bit: int) -> None:
    frame = bytearray(_header(meta={**META, "tool": "x"}).encode())
    Header.decode(bytes(frame[8:]))
    pos = pos % (len(frame) - 8) + 8
    frame[pos] ^= 1 << bit
    with pytest.raises(CorruptImageError):
        Header.decode(bytes(frame[8:]))


def test_higher_major_refused_in_one_line_higher_minor_read() -> None:
    body = bytearray(_header().encode()[8:-4])
    struct.pack_into("<H", body, 8, 3)
    with pytest.raises(UnsupportedError, match=r"image format 3\.0; this tool reads format 1\.x") as e:
        Header.decode(_rewrap(body))
    assert "\n" not in str(e.value)
    struct.pack_into("<HH", body, 8, 2, 1)  # only 2.0 (pre-release numbering of 1.0) is read
    with pytest.raises(UnsupportedError, match=r"2\.1"):
        Header.decode(_rewrap(body))
    struct.pack_into("<HH", body, 8, 1, 7)
    assert Header.decode(_rewrap(body)).version_minor == 7
    struct.pack_into("<HH", body, 8, 2, 0)
    assert Header.decode(_rewrap(body)).version_major == 2
    for frame, decode in ((Trailer(5, 1, dict(TMETA), frame_crcs=b"\0" * 4).encode(), Trailer.decode),
                          (Event(0, [(0, 512)]).encode(), Event.decode)):
        body = bytearray(frame[8:-4])
        struct.pack_into("<H", body, 8, 9)
        with pytest.raises(UnsupportedError, match=r"9\.0"):
            decode(_rewrap(body))


def test_unknown_sections_flag_bits_and_reserved_fields_are_ignored() -> None:
    h = _header(meta={**META, "k": 1})
    body = bytearray(h.encode()[8:-4])
    struct.pack_into("<I", body, 32, 2)  # section_count
    struct.pack_into("<I", body, 36, 0xDEADBEEF)  # reserved
    struct.pack_into("<I", body, 12, 0x80000000)  # a flag bit a later minor version may define
    body += b"ZZZZ" + struct.pack("<I", 3) + b"abc"
    back = Header.decode(_rewrap(body))
    assert back.meta["k"] == 1 and not back.used_only


def test_known_section_twice_is_rejected() -> None:
    body = bytearray(_header().encode()[8:-4])
    meta = json.dumps(META).encode()
    struct.pack_into("<I", body, 32, 2)
    body += b"META" + struct.pack("<I", len(meta)) + meta
    with pytest.raises(CorruptImageError, match="twice"):
        Header.decode(_rewrap(body))


def test_header_flag_and_amap_must_agree() -> None:
    with_map = _header(flags=0, meta=META, allocation=AMAP).encode()
    with pytest.raises(CorruptImageError, match="used-only flag is clear but the AMAP section is present"):
        Header.decode(with_map[8:])
    without = _header(flags=c.HEADER_FLAG_USED_ONLY, meta=_used_meta()).encode()
    with pytest.raises(CorruptImageError, match="used-only flag is set but the AMAP section is missing"):
        Header.decode(without[8:])
    no_meta = _header(flags=c.HEADER_FLAG_USED_ONLY, meta=META, allocation=AMAP).encode()
    with pytest.raises(CorruptImageError, match="lacks a 'used_only' object"):
        Header.decode(no_meta[8:])


def test_trailer_flag_and_badr_must_agree_and_fcrc_is_required() -> None:
    t = Trailer(5 << 20, 5, dict(TMETA), [(512, 1024)], frame_crcs=b"\0" * 20)
    assert Trailer.decode(t.encode()[8:]) == t
    body = bytearray(t.encode()[8:-4])
    struct.pack_into("<I", body, 12, 0)
    with pytest.raises(CorruptImageError, match="bad-ranges flag is clear but the BADR section is present"):
        Trailer.decode(_rewrap(body))
    body = bytearray(Trailer(5 << 20, 5, dict(TMETA), frame_crcs=b"\0" * 20).encode()[8:-4])
    struct.pack_into("<I", body, 12, 1)
    with pytest.raises(CorruptImageError, match="flag is set but the BADR section is missing"):
        Trailer.decode(_rewrap(body))
    with pytest.raises(CorruptImageError, match="frame CRC list holds no entries for 5 chunks"):
        Trailer.decode(Trailer(5 << 20, 5, dict(TMETA)).encode()[8:])
    with pytest.raises(CorruptImageError, match="holds 4 entries for 5 chunks"):
        Trailer.decode(Trailer(5 << 20, 5, dict(TMETA), frame_crcs=b"\0" * 16).encode()[8:])


@pytest.mark.parametrize(("ranges", "ok"), [
    ([(0, 4096), (4096, 4096)], True),  # touching: allowed
    ([(0, 4096), (8192, (5 << 20) - 8192)], True),  # up to the source's end
    ([(0, 4096), (4095, 10)], False),  # overlapping
    ([(8192, 10), (0, 10)], False),  # unsorted
    ([(100, 0)], False),  # empty
    ([((5 << 20) - 10, 11)], False),  # past source_size
])
def test_range_lists_amap_and_badr_follow_one_rule(ranges: list[tuple[int, int]], ok: bool) -> None:
    raw = b"".join(struct.pack("<QQ", o, o + n) for o, n in ranges)
    trailer = Trailer(5 << 20, 5, dict(TMETA), frame_crcs=b"\0" * 20)
    body = bytearray(trailer.encode()[8:-4])
    struct.pack_into("<I", body, 12, 1)  # flags: BADR present
    struct.pack_into("<I", body, 32, 3)  # section_count
    body += b"BADR" + struct.pack("<I", len(raw)) + raw
    used = sum(n for _, n in ranges)
    meta = {**_used_meta(raw), "used_only": {**_used_meta(raw)["used_only"], "used_bytes": used,
                                              "extents": len(ranges)}}
    header = _header(flags=c.HEADER_FLAG_USED_ONLY, meta=meta, allocation=raw).encode()[8:]
    if ok:
        assert Trailer.decode(_rewrap(body)).bad_ranges == ranges
        assert Header.decode(header).allocation == raw
    else:
        with pytest.raises(CorruptImageError, match="BADR"):
            Trailer.decode(_rewrap(body))
        with pytest.raises(CorruptImageError, match="AMAP"):
            Header.decode(header)


@pytest.mark.parametrize(("key", "value"), [
    ("level", 99), ("level", "x"), ("level", True), ("level", 3.0), ("source", ["a"]), ("source", "disk"),
    ("digests", "blake3"), ("digests", ["blake3", "blake3"]), ("digests", [1]), ("split_size", -1),
    ("command_line", "image a b"), ("source", {"size": "big"}), ("source", {"window_offset": -1}),
    ("source", {"stable_names": [1]}), ("source", {"udev": {"ID_BUS": 3}}), ("created", 5),
])
def test_header_meta_of_the_wrong_type_is_corrupt(key: str, value: object) -> None:
    with pytest.raises(CorruptImageError, match="META"):
        Header.decode(_header(meta={**META, key: value}).encode()[8:])


@pytest.mark.parametrize(("key", "value"), [
    ("digests", ["ab"]), ("digests", {"blake3": 5}), ("digests", {"blake3": "AB" * 32}),
    ("digests", {"sha256": "ab"}), ("stats", []), ("stats", {"chunks": "1"}), ("finished", None),
    ("digest_covers", "everything"),
])
def test_trailer_meta_of_the_wrong_type_is_corrupt(key: str, value: object) -> None:
    with pytest.raises(CorruptImageError, match="META"):
        Trailer.decode(Trailer(5, 1, {**TMETA, key: value}, frame_crcs=b"\0" * 4).encode()[8:])


def test_meta_not_json_deeply_nested_or_huge_numbers_is_corrupt() -> None:
    for meta in (b"[" * 100000 + b"]" * 100000, b'{"level": ' + b"9" * 5000 + b"}", b"\xff", b"[]",
                 b'{"digests": [], "x": NaN}', b'{"digests": [], "x": 1e999}'):
        body = bytearray(_header().encode()[8:-4])
        body = body[: c.HEADER_FIXED.size] + b"META" + struct.pack("<I", len(meta)) + meta
        with pytest.raises(CorruptImageError, match="META"):
            Header.decode(_rewrap(body))


def test_missing_required_meta_is_corrupt() -> None:
    with pytest.raises(CorruptImageError, match="no 'digests'"):
        Header.decode(_header(meta={"level": 3}).encode()[8:])
    with pytest.raises(CorruptImageError, match="no 'digests'"):
        Trailer.decode(Trailer(5, 1, {}, frame_crcs=b"\0" * 4).encode()[8:])
    body = bytearray(_header().encode()[8:-4])
    body = body[: c.HEADER_FIXED.size]
    struct.pack_into("<I", body, 32, 0)
    with pytest.raises(CorruptImageError, match="no META"):
        Header.decode(_rewrap(body))


def test_event_roundtrip_needs_ranges_inside_its_chunk() -> None:
    e = Event(7, [(7 * 65536, 512), (7 * 65536 + 4096, 512)])
    assert Event.decode(e.encode()[8:]) == e
    e.check_chunk(65536, 10 * 65536)
    with pytest.raises(CorruptImageError, match="outside the chunk"):
        Event(7, [(6 * 65536, 512)]).check_chunk(65536, 10 * 65536)
    with pytest.raises(CorruptImageError, match="past the last chunk"):
        Event(10, [(10 * 65536, 512)]).check_chunk(65536, 10 * 65536)
    with pytest.raises(CorruptImageError, match="holds no bad ranges"):
        Event.decode(Event(1, []).encode()[8:])
    frame = bytearray(e.encode())
    frame[-6] ^= 0x40
    with pytest.raises(CorruptImageError):
        Event.decode(bytes(frame[8:]))
