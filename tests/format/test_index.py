from __future__ import annotations

import struct

import pytest

from imaging_utility.errors import ChunkCorruptError, CorruptImageError, IncompleteImageError
from imaging_utility.format import c_image as c
from imaging_utility.format.codec import Codec, frame_checksum
from imaging_utility.format.index import SeekTable, walk_frames
from imaging_utility.format.metaframe import Header


def _file(frames: list[bytes], table: SeekTable) -> bytes:
    return b"".join(frames) + table.encode()


def test_seek_table_golden_bytes() -> None:
    t = SeekTable()
    t.append(10, 0, c.XXH64_EMPTY_LOW32)
    t.append(20, 1 << 20, 0xDEADBEEF)
    raw = t.encode()
    assert raw[:8] == struct.pack("<II", 0x184D2A5E, 2 * 12 + 9)
    assert raw[8:20] == struct.pack("<III", 10, 0, 0x51D8E999)
    assert raw[-9:] == struct.pack("<IBI", 2, 0x80, 0x8F92EAB1)


def test_seek_table_load_checks_sizes() -> None:
    frames = [b"x" * 10, b"y" * 20]
    t = SeekTable()
    t.append(10, 0, 0)
    t.append(20, 5, 0)
    data = _file(frames, t)
    loaded, off = SeekTable.load(lambda o, n: data[o : o + n], len(data))
    assert off == 30 and list(loaded.csizes) == [10, 20]
    bad = bytearray(data)
    bad[30 + 8] ^= 1  # first entry's compressed size
    with pytest.raises(CorruptImageError, match="add up"):
        SeekTable.load(lambda o, n: bytes(bad[o : o + n]), len(bad))
    bad = bytearray(data)
    bad[-5] |= 0x04  # reserved descriptor bit
    with pytest.raises(CorruptImageError, match="reserved"):
        SeekTable.load(lambda o, n: bytes(bad[o : o + n]), len(bad))
    with pytest.raises(IncompleteImageError, match="--resume"):
        SeekTable.load(lambda o, n: data[o : o + n], len(data) - 1)


def test_walk_frames_stops_at_incomplete_frame() -> None:
    codec = Codec(3)
    header = Header(1 << 16, 3 << 16).encode()
    chunks = [bytes(range(256)) * 256, bytes(1 << 16), b"abc" * 21845 + b"d"]
    frames = [codec.compress(x) for x in chunks]
    data = header + b"".join(frames)
    found = list(walk_frames(lambda o, n: data[o : o + n], len(data)))
    assert [f.magic for f in found] == [c.HEADER_MAGIC] + [c.ZSTD_MAGIC] * 3
    assert [f.content_size for f in found[1:]] == [len(x) for x in chunks]
    assert [f.checksum for f in found[1:]] == [frame_checksum(f) for f in frames]
    for cut in range(len(data)):
        got = list(walk_frames(lambda o, n: data[o : o + n], cut))
        assert sum(f.length for f in got) <= cut
        assert all(f.offset + f.length <= cut for f in got)
    assert list(walk_frames(lambda o, n: (b"\0" * 64)[o : o + n], 64)) == []


@pytest.mark.parametrize("claimed", [1 << 51, (64 << 10) + 1, 1000])
def test_a_frame_declaring_another_content_size_is_corrupt_before_decoding(claimed: int) -> None:
    """libzstd allocates a frame's declared content size whole: a frame claiming 2**51 bytes was a
    MemoryError (a fuzz input).  Any declared size but the chunk's is refused before decoding."""
    frame = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + claimed.to_bytes(8, "little"))  # single segment, 8-byte FCS
    frame += ((1000 << 3) | 1).to_bytes(3, "little") + b"a" * 1000  # one raw block, the last
    with pytest.raises(ChunkCorruptError, match=f"its frame declares {claimed} bytes, expected {64 << 10}"):
        Codec(1).decompress(bytes(frame), 64 << 10, 3, 3 << 16)
