"""Truncation at any byte is resumable to an identical result (same data frames, same digests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools import data_frames, image_bytes, image_file, mixed_bytes
from imaging_utility.errors import ResumeMismatchError
from imaging_utility.image.reader import open_image
from imaging_utility.storage.local import resolve_parts

CHUNK = 64 * 1024


class _Data(bytes):
    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    d = tmp_path_factory.mktemp("ref")
    data = mixed_bytes(8 * CHUNK + 4321, 9, region=16384)
    (d / "src").write_bytes(data)
    image_file(d / "src", d / "full.img", chunk_size=CHUNK)
    return d / "src", d / "full.img", _Data(data)


def _truncate_parts(base: Path, cut: int) -> None:
    """Keep only the first ``cut`` bytes of the (possibly split) image."""
    for p in resolve_parts(str(base)):
        size = os.path.getsize(p)
        keep = max(0, min(size, cut))
        if keep == 0 and p != resolve_parts(str(base))[0]:
            os.unlink(p)
        else:
            os.truncate(p, keep)
        cut -= size


@settings(max_examples=60)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_truncation_anywhere_resumes_identically(tmp_path_factory: pytest.TempPathFactory,
                                                 reference: tuple[Path, Path, bytes], where: float) -> None:
    src, full, data = reference
    d = tmp_path_factory.mktemp("cut")
    raw = full.read_bytes()
    cut = int(where * len(raw))
    (d / "img").write_bytes(raw[:cut])
    result = image_file(src, d / "img", chunk_size=CHUNK, resume=True)
    assert data_frames(d / "img") == data_frames(full)
    with open_image(str(d / "img")) as a, open_image(str(full)) as b:
        assert a.trailer is not None and b.trailer is not None
        assert a.trailer.meta["digests"] == b.trailer.meta["digests"]
        assert a.read(0, len(data)) == data
    assert result.digests == b.trailer.meta["digests"]


@pytest.mark.parametrize("cut", range(0, 17))
def test_cut_inside_the_first_frame_header_restarts(tmp_path: Path, reference: tuple[Path, Path, bytes],
                                                    cut: int) -> None:
    """A cut inside the header frame's magic or size field (found by the soak run: cuts of 5..7 bytes were
    refused as "not an imaging-utility image") starts the image over."""
    src, full, data = reference
    (tmp_path / "img").write_bytes(full.read_bytes()[:cut])
    image_file(src, tmp_path / "img", chunk_size=CHUNK, resume=True)
    assert data_frames(tmp_path / "img") == data_frames(full)
    with open_image(str(tmp_path / "img")) as reader:
        assert reader.read(0, len(data)) == data


@settings(max_examples=25)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_split_truncation_resumes_identically(tmp_path_factory: pytest.TempPathFactory,
                                              reference: tuple[Path, Path, bytes], where: float) -> None:
    src, _, _ = reference
    d = tmp_path_factory.mktemp("splitcut")
    image_file(src, d / "ref.img", chunk_size=CHUNK, split_size=3 * CHUNK)
    image_file(src, d / "img", chunk_size=CHUNK, split_size=3 * CHUNK)
    total = len(image_bytes(d / "img"))
    _truncate_parts(d / "img", int(where * total))
    image_file(src, d / "img", chunk_size=CHUNK, split_size=3 * CHUNK, resume=True)
    assert data_frames(d / "img") == data_frames(d / "ref.img")
    ref_parts = [Path(p).stat().st_size for p in resolve_parts(str(d / "ref.img"))]
    new_parts = [Path(p).stat().st_size for p in resolve_parts(str(d / "img"))]
    # the same cut points; only the last part (trailer statistics of this run) may differ in size
    assert ref_parts[:-1] == new_parts[:-1] and len(ref_parts) == len(new_parts)
    assert all(size <= 3 * CHUNK for size in new_parts)


def test_resume_of_complete_image_rewrites_nothing_but_the_tail(tmp_path: Path,
                                                               reference: tuple[Path, Path, bytes]) -> None:
    src, full, _ = reference
    (tmp_path / "img").write_bytes(full.read_bytes())
    result = image_file(src, tmp_path / "img", chunk_size=CHUNK, resume=True)
    assert result.resumed_at == len(reference[2])
    assert result.read_bytes == 0
    assert data_frames(tmp_path / "img") == data_frames(full)


def test_resume_refuses_other_options_or_source(tmp_path: Path, reference: tuple[Path, Path, bytes]) -> None:
    src, full, data = reference
    raw = full.read_bytes()
    (tmp_path / "img").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ResumeMismatchError, match="chunk size"):
        image_file(src, tmp_path / "img", chunk_size=2 * CHUNK, resume=True)
    with pytest.raises(ResumeMismatchError, match="compression level"):
        image_file(src, tmp_path / "img", chunk_size=CHUNK, level=5, resume=True)
    with pytest.raises(ResumeMismatchError, match="digests"):
        image_file(src, tmp_path / "img", chunk_size=CHUNK, digests=("md5",), resume=True)
    other = tmp_path / "other"
    other.write_bytes(data + b"more")
    with pytest.raises(ResumeMismatchError, match="source size"):
        image_file(other, tmp_path / "img", chunk_size=CHUNK, resume=True)
    not_image = tmp_path / "notimage"
    not_image.write_bytes(b"hello world, this is not an image" * 10)
    with pytest.raises(ResumeMismatchError, match="not an imaging-utility image"):
        image_file(src, not_image, chunk_size=CHUNK, resume=True)
    assert exit_code(ResumeMismatchError("x")) == 10


def exit_code(e: Exception) -> int:
    return int(getattr(e, "exit_code", -1))


def test_corrupt_tail_frame_is_dropped_and_rewritten(tmp_path: Path, reference: tuple[Path, Path, bytes]) -> None:
    src, full, _ = reference
    raw = bytearray(full.read_bytes())
    with open_image(str(full)) as im:
        third = im.chunk_offsets[3] + 20
    raw[third] ^= 0xFF  # damage chunk 3, as a torn write after power loss would
    (tmp_path / "img").write_bytes(raw[: im.table_offset - 100])
    image_file(src, tmp_path / "img", chunk_size=CHUNK, resume=True)
    assert data_frames(tmp_path / "img") == data_frames(full)
