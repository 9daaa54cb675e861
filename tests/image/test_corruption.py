"""Any single flipped byte in a data frame or the index is reported; read() raises instead of lying."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools import image_file, mixed_bytes
from imaging_utility.errors import ChunkCorruptError, CorruptImageError
from imaging_utility.image.reader import ImageReader, open_image

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("pristine")
    data = mixed_bytes(10 * CHUNK + 999, 21, region=8192)
    (d / "src").write_bytes(data)
    image_file(d / "src", d / "img", chunk_size=CHUNK)
    return d / "img", _Data(data)


class _Data(bytes):
    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def _chunk_of(reader: ImageReader, pos: int) -> int | None:
    for i in range(reader.chunk_count):
        if reader.chunk_offsets[i] <= pos < reader.chunk_offsets[i] + reader.chunk_csizes[i]:
            return i
    return None


@settings(max_examples=120)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_byte_is_detected(tmp_path_factory: pytest.TempPathFactory, pristine: tuple[Path, bytes],
                                      where: float, bit: int) -> None:
    img, data = pristine
    raw = bytearray(img.read_bytes())
    with open_image(str(img)) as good:
        table_off = good.table_offset
        pos = int(where * len(raw))
        chunk = _chunk_of(good, pos)
    raw[pos] ^= 1 << bit
    bad = tmp_path_factory.mktemp("flip") / "img"
    bad.write_bytes(raw)
    try:
        reader = open_image(str(bad))
    except CorruptImageError:
        return  # header, trailer or index damage: refused at open
    with reader:
        report = reader.verify()
        assert not report.ok, f"flip at {pos} (table at {table_off}) not reported"
        if chunk is not None:
            assert any(f["chunk"] == chunk for f in report.failures)
            assert report.failures[0]["offset"] == chunk * CHUNK
            # a read fails, or (a flip zstd ignores, which only verify's frame CRC sees) returns the right bytes
            try:
                got = reader.read(chunk * CHUNK, CHUNK)
            except ChunkCorruptError as e:
                assert e.chunk == chunk
            else:
                assert got == data[chunk * CHUNK : (chunk + 1) * CHUNK]
            # every other chunk still reads correctly
            other = (chunk + 1) % reader.chunk_count
            assert reader.read(other * CHUNK, CHUNK) == data[other * CHUNK : (other + 1) * CHUNK]


def test_truncated_and_garbage_images(tmp_path: Path, pristine: tuple[Path, bytes]) -> None:
    img, _ = pristine
    raw = img.read_bytes()
    for cut in (0, 7, 100, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(raw[:cut])
        with pytest.raises(CorruptImageError):
            open_image(str(p))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(CorruptImageError):
        open_image(str(garbage))
    plain = tmp_path / "plain.zst"
    import zstandard

    plain.write_bytes(zstandard.ZstdCompressor().compress(b"x" * 100000))
    with pytest.raises(CorruptImageError):
        open_image(str(plain))


def test_concurrent_reads_are_consistent(tmp_path: Path, pristine: tuple[Path, bytes]) -> None:
    import random
    import threading

    img, data = pristine
    errors: list[str] = []
    with open_image(str(img), cache_bytes=3 * CHUNK) as reader:

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(300):
                off = rng.randrange(len(data))
                n = rng.randrange(1, 3 * CHUNK)
                if reader.read(off, n) != data[off : off + n]:
                    errors.append(f"{off}+{n}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_split_part_missing_is_reported(tmp_path: Path) -> None:
    import random

    data = random.Random(2).randbytes(1 << 20)
    (tmp_path / "src").write_bytes(data)
    image_file(tmp_path / "src", tmp_path / "s.img", chunk_size=CHUNK, split_size=2 * CHUNK)
    assert (tmp_path / "s.img.003").exists()
    shutil.move(tmp_path / "s.img.002", tmp_path / "elsewhere")
    with pytest.raises(CorruptImageError):
        open_image(str(tmp_path / "s.img"))


def test_flip_that_decodes_identically_is_still_caught(tmp_path: Path, pristine: tuple[Path, bytes]) -> None:
    """zstd decoders ignore the frame header's unused bit (FHD bit 4): the content checksum alone would
    pass. ``verify`` checks the per-frame CRC-32 in the trailer and catches it; a read, whose bytes the
    content checksum proves right, returns them."""
    img, data = pristine
    raw = bytearray(img.read_bytes())
    with open_image(str(img)) as good:
        index = next(i for i in range(good.chunk_count) if not good.is_zero_chunk(i))
        raw[good.chunk_offsets[index] + 4] ^= 0x10
    bad = tmp_path / "img"
    bad.write_bytes(raw)
    import zstandard

    frame = bytes(raw[good.chunk_offsets[index] : good.chunk_offsets[index] + good.chunk_csizes[index]])
    assert zstandard.ZstdDecompressor().decompress(frame) == data[index * CHUNK : (index + 1) * CHUNK]
    with open_image(str(bad)) as reader:
        report = reader.verify()
        assert not report.ok and report.failures[0]["chunk"] == index
        assert "CRC-32" in report.failures[0]["error"]
        assert reader.read(index * CHUNK, CHUNK) == data[index * CHUNK : (index + 1) * CHUNK]
        with pytest.raises(ChunkCorruptError, match="CRC-32"):
            reader.decode_chunk(index, check_frame=True)
