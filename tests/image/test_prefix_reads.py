"""Random reads of large chunks decode only a prefix of the frame: the bytes are right, the whole frame is
still checked, and a later read of the rest of the chunk decodes it in full."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from imagetools import image_file, mixed_bytes
from imaging_utility.errors import ChunkCorruptError
from imaging_utility.image.reader import open_image

CHUNK = 1024 * 1024


@pytest.fixture(scope="module")
def big_chunks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("prefix")
    data = mixed_bytes(6 * CHUNK + 12345, 5, region=128 * 1024)
    (d / "src").write_bytes(data)
    image_file(d / "src", d / "img", chunk_size=CHUNK)
    return d / "img", data


def test_random_reads_decode_prefixes_and_return_the_right_bytes(big_chunks: tuple[Path, bytes]) -> None:
    img, data = big_chunks
    rng = random.Random(3)
    with open_image(str(img)) as reader:
        assert reader.frame_crcs is not None
        for index in (5, 4, 2, 1, 0):  # never the chunk after one read before: every read is "random"
            off = index * CHUNK + rng.randrange(0, CHUNK // 4)
            buf = bytearray(4096)
            reader.readinto_at(off, buf)
            assert buf == data[off:off + 4096]
        prefixes = {i: len(v) for i, v in reader._cache.items()}
        assert prefixes and all(n < CHUNK for n in prefixes.values())  # only prefixes were decoded
        # reading the chunk's end now decodes it in full, and the bytes are still right
        off = 4 * CHUNK + CHUNK - 5000
        buf = bytearray(5000)
        reader.readinto_at(off, buf)
        assert buf == data[off:off + 5000] and len(reader._cache[4]) == CHUNK
        # a read across a chunk boundary and to the very end of the image
        for off, n in ((3 * CHUNK - 100, 300), (len(data) - 777, 777)):
            buf = bytearray(n)
            reader.readinto_at(off, buf)
            assert buf == data[off:off + n]


def test_a_flip_past_the_prefix_still_fails_the_read(big_chunks: tuple[Path, bytes], tmp_path: Path) -> None:
    img, _data = big_chunks
    bad = tmp_path / "bad.img"
    raw = bytearray(img.read_bytes())
    with open_image(str(img)) as reader:
        start, size = reader.chunk_offsets[3], reader.chunk_csizes[3]
    raw[start + size - 100] ^= 0x40  # near the end of chunk 3's frame, far past a 4 KiB prefix
    bad.write_bytes(bytes(raw))
    with open_image(str(bad)) as reader, pytest.raises(ChunkCorruptError, match="chunk 3"):
        reader.readinto_at(3 * CHUNK + 10, bytearray(4096))
