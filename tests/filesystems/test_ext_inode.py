"""``ext_inode.ExtVolume`` on hostile inodes: whatever ``i_block``, ``i_size`` and the blocks they point
to say, the answer is runs inside the volume covering the file, or one ``CorruptImageError``; time and
memory stay bounded (a claimed size is never expanded block by block)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fsbuild
from conftest import need_tools
from imaging_utility.blocks import BytesSource
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems import c_ext as c
from imaging_utility.filesystems.ext import ExtSuper
from imaging_utility.filesystems.ext_inode import ExtVolume

_volume: dict[str, ExtVolume] = {}


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> ExtVolume:
    need_tools("mke2fs")
    tmp = tmp_path_factory.mktemp("extinode")
    (tmp / "tree").mkdir()
    (tmp / "tree" / "f.bin").write_bytes(bytes(range(256)) * 400)
    path = tmp / "v.raw"
    fsbuild.random_image(path, 4)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", str(tmp / "tree"), str(path)],
                   check=True, capture_output=True)
    data = path.read_bytes()
    sb = ExtSuper.from_bytes(data[1024:2048])
    assert sb is not None
    return ExtVolume(BytesSource(data), sb)


def _inode(template: bytes, iblock: bytes, size: int, flags: int) -> bytes:
    raw = bytearray(template)
    raw[c.INODE_BLOCK_OFFSET : c.INODE_BLOCK_OFFSET + 60] = iblock
    struct.pack_into("<I", raw, 0x04, size & 0xFFFFFFFF)
    struct.pack_into("<I", raw, 0x6C, size >> 32)
    struct.pack_into("<I", raw, 0x20, flags)
    return bytes(raw)


def _check(vol: ExtVolume, raw: bytes, ino: int) -> None:
    size = ExtVolume.size_of(raw)
    try:
        runs = vol.runs(raw, ino)
    except CorruptImageError as e:
        assert "\n" not in str(e) and f"inode {ino}" in str(e)
        return
    assert sum(n for _, n in runs) == -(-size // vol.block_size)
    for start, n in runs:
        assert n > 0
        if start is not None:
            assert vol.sb.first_data_block <= start and start + n <= vol.sb.blocks_count


header = st.builds(lambda e, m, d: struct.pack("<HHHHI", 0xF30A, e, m, d, 0),
                   st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))
leaf = st.builds(lambda b, n, hi, lo: struct.pack("<IHHI", b, n, hi, lo), st.integers(0, (1 << 32) - 1),
                 st.integers(0, 0xFFFF), st.integers(0, 3), st.integers(0, (1 << 32) - 1))


@given(header, st.lists(leaf, min_size=4, max_size=4), st.integers(0, 1 << 44))
def test_hostile_extent_trees(vol: ExtVolume, head: bytes, leaves: list[bytes], size: int) -> None:
    template = vol.raw_inode(12)
    _check(vol, _inode(template, head + b"".join(leaves), size, c.EXT4_EXTENTS_FL), 12)


@given(st.lists(st.integers(0, (1 << 32) - 1) | st.integers(0, 5000), min_size=15, max_size=15),
       st.integers(0, 1 << 40))
def test_hostile_block_maps(vol: ExtVolume, pointers: list[int], size: int) -> None:
    template = vol.raw_inode(12)
    _check(vol, _inode(template, struct.pack("<15I", *pointers), size, 0), 12)


@given(st.binary(min_size=60, max_size=60), st.integers(0, 1 << 33))
def test_hostile_directories(vol: ExtVolume, iblock: bytes, size: int) -> None:
    template = vol.raw_inode(2)
    for flags in (c.EXT4_EXTENTS_FL, 0, c.EXT4_INLINE_DATA_FL):
        raw = _inode(template, iblock, size, flags)
        try:
            for name, ino in vol.entries(raw, 2):
                assert 0 < ino <= vol.sb.inodes_count and len(name) < 256
        except CorruptImageError as e:
            assert "\n" not in str(e)


def test_a_real_file_maps_to_its_blocks(vol: ExtVolume, tmp_path: Path) -> None:
    runs = vol.runs(vol.raw_inode(12), 12)
    assert sum(n for _, n in runs) == -(-102400 // vol.block_size) and all(s is not None for s, _ in runs)
