from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import need_tools
from imagetools import image_file, mixed_bytes, remove, sparse_file
from imaging_utility.extents import ExtentKind
from imaging_utility.image.reader import open_image
from imaging_utility.ops.restore import restore

CHUNK = 64 * 1024


@given(size=st.one_of(st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK]),
                      st.integers(min_value=0, max_value=6 * CHUNK)),
       seed=st.integers(min_value=0, max_value=2**16))
def test_roundtrip_any_size(tmp_path_factory: pytest.TempPathFactory, size: int, seed: int) -> None:
    d = tmp_path_factory.mktemp("rt")
    data = mixed_bytes(size, seed, region=4096)
    src = d / "src"
    src.write_bytes(data)
    result = image_file(src, d / "img", chunk_size=CHUNK, threads=2, digests=("sha256", "blake3", "md5"))
    assert result.digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                              "blake3": blake3.blake3(data).hexdigest()}
    with open_image(str(d / "img")) as im:
        assert im.size == size
        assert im.read(0, size) == data
        if size:
            off = seed % size
            assert im.read(off, 777) == data[off : off + 777]
        assert sum(e.length for e in im.chunk_map()) == size
        assert im.verify().ok
        restore(im, str(d / "out"))
    assert (d / "out").read_bytes() == data


def test_several_gib_sparse_source(tmp_path: Path) -> None:
    size = 4 * 2**30 + 12345
    islands = {0: b"boot" * 128, 2**30 + 17: b"middle" * 1000, size - 4096: b"E" * 4096}
    src = sparse_file(tmp_path / "sparse.raw", size, islands)
    result = image_file(src, tmp_path / "sparse.img", chunk_size=4 << 20, digests=("sha256",))
    assert result.image_bytes < 2 << 20
    expected = hashlib.sha256()
    with open(src, "rb") as fh:
        while block := fh.read(16 << 20):
            expected.update(block)
    assert result.digests["sha256"] == expected.hexdigest()
    with open_image(str(tmp_path / "sparse.img")) as im:
        assert im.size == size
        for off, data in islands.items():
            assert im.read(off, len(data)) == data
        zero = sum(e.length for e in im.chunk_map() if e.kind is ExtentKind.ZERO)
        assert zero > size - (16 << 20)
        restore(im, str(tmp_path / "restored.raw"))
    out = tmp_path / "restored.raw"
    assert out.stat().st_size == size
    assert out.stat().st_blocks * 512 < 64 << 20  # zero chunks became holes
    with open(out, "rb") as fh:
        for off, data in islands.items():
            fh.seek(off)
            assert fh.read(len(data)) == data


def test_zstd_cli_decodes_image_and_split_parts(tmp_path: Path) -> None:
    need_tools("zstd")
    data = mixed_bytes(5 << 20, 7)
    src = tmp_path / "src"
    src.write_bytes(data)
    image_file(src, tmp_path / "one.img", chunk_size=CHUNK)
    out = subprocess.run(["zstd", "-dc", str(tmp_path / "one.img")], capture_output=True, check=True).stdout
    assert out == data
    subprocess.run(["zstd", "-t", "-q", str(tmp_path / "one.img")], check=True)
    image_file(src, tmp_path / "split.img", chunk_size=CHUNK, split_size=300 * 1024)
    parts = sorted(tmp_path.glob("split.img.0*"))
    assert len(parts) > 3
    assert all(p.stat().st_size <= 300 * 1024 for p in parts)
    out = subprocess.run(f"cat {tmp_path}/split.img.0* | zstd -dc", shell=True, capture_output=True,
                         check=True).stdout
    assert out == data
    listing = subprocess.run(["zstd", "-lv", str(tmp_path / "one.img")], capture_output=True, text=True,
                             check=True).stdout
    assert "Skippable Frames: 3" in listing  # header, trailer, seek table


def test_pyzstd_seekable_reader_random_ranges(tmp_path: Path) -> None:
    import random

    import pyzstd

    data = mixed_bytes(3 << 20, 3)
    src = tmp_path / "src"
    src.write_bytes(data)
    image_file(src, tmp_path / "img", chunk_size=CHUNK)
    assert pyzstd.SeekableZstdFile.is_seekable_format_file(str(tmp_path / "img"))
    rng = random.Random(5)
    with pyzstd.SeekableZstdFile(str(tmp_path / "img"), "r") as f:
        for _ in range(50):
            off = rng.randrange(len(data))
            n = rng.randrange(1, 300_000)
            f.seek(off)
            assert f.read(n) == data[off : off + n]


def test_split_image_reads_the_same(tmp_path: Path) -> None:
    data = mixed_bytes(2 << 20, 11)
    src = tmp_path / "src"
    src.write_bytes(data)
    image_file(src, tmp_path / "s.img", chunk_size=CHUNK, split_size=256 * 1024)
    for name in ("s.img", "s.img.001"):
        with open_image(str(tmp_path / name)) as im:
            assert len(im.paths) > 2
            assert im.read(100_000, 1_500_000) == data[100_000:1_600_000]
            assert im.verify().ok
    remove(tmp_path / "s.img")
    assert not list(tmp_path.glob("s.img*"))


def test_threads_and_chunk_sizes_give_identical_images(tmp_path: Path) -> None:
    data = mixed_bytes(1 << 20, 4)
    src = tmp_path / "src"
    src.write_bytes(data)
    from imagetools import data_frames

    image_file(src, tmp_path / "a", chunk_size=CHUNK, threads=1)
    image_file(src, tmp_path / "b", chunk_size=CHUNK, threads=4)
    assert data_frames(tmp_path / "a") == data_frames(tmp_path / "b")


def test_every_split_part_is_synced_and_leaves_the_page_cache(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each finished part is fsynced before the next starts (a power cut after the image finished must
    not lose the tail of an earlier part), then dropped from the page cache."""
    import os

    from imaging_utility.storage import local

    synced: list[str] = []
    dropped: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def drop(fd: int) -> None:
        dropped.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(local.os, "fsync", fsync)
    monkeypatch.setattr(local, "drop_cached", drop)
    src = tmp_path / "src"
    src.write_bytes(mixed_bytes(2 << 20, 12))
    image_file(src, tmp_path / "s.img", chunk_size=CHUNK, split_size=256 * 1024)
    with open_image(str(tmp_path / "s.img")) as im:
        parts = [str(Path(p).resolve()) for p in im.paths]
    assert len(parts) > 2
    assert set(parts) <= set(synced) and set(parts) <= set(dropped)


def test_written_image_leaves_the_page_cache(tmp_path: Path) -> None:
    """The image's pages are dropped once on the disk (checked with mincore on the real file)."""
    import random as rnd

    from imagetools import resident

    src = tmp_path / "src"
    src.write_bytes(rnd.Random(3).randbytes(12 << 20))  # incompressible: the image is as large
    image_file(src, tmp_path / "r.img", chunk_size=CHUNK)
    size = (tmp_path / "r.img").stat().st_size
    assert size > 12 << 20 and resident(str(tmp_path / "r.img"), 0, size) <= 1 << 20
