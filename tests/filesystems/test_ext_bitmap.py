"""ext4 block bitmaps checked against their checksums (metadata_csum), as the kernel checks them.

A bitmap damaged in place can still mark as many clusters as its group's free count says (a bit
cleared here, another set there): only its checksum tells.  The kernel then marks the group corrupt;
used-only keeps that group whole, so a cluster of a file that the damaged bitmap calls free is kept.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import need_tools
from imaging_utility.blocks import BytesSource
from imaging_utility.filesystems import allocation_map, ext


def _volume(tmp_path: Path, opts: tuple[str, ...]) -> bytearray:
    need_tools("mke2fs")
    files = tmp_path / "files"
    files.mkdir()
    (files / "data.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB
    path = tmp_path / "ext4.img"
    fsbuild.random_image(path, 8)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", *opts, "-d", str(files), str(path)],
                   check=True, capture_output=True)
    return bytearray(path.read_bytes())


def _bits(bitmap: bytes | bytearray, count: int) -> list[bool]:
    return [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(count)]


def _flip(data: bytearray, at: int, bit: int) -> None:
    data[at + bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("opts", [(), ("-O", "^64bit")], ids=["64bit", "32bit-descriptors"])
def test_bitmap_failing_its_checksum_keeps_its_group(opts: tuple[str, ...], tmp_path: Path) -> None:
    data = _volume(tmp_path, opts)
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None and sb.ro_compat & ext.RO_COMPAT_METADATA_CSUM
    assert (sb.desc_size >= 64) == (opts == ())
    info, intact = allocation_map(BytesSource(bytes(data)))
    assert info.warnings == ()
    table = ext._read_groups(BytesSource(bytes(data)), sb)
    bs, count = sb.block_size, sb.group_blocks(0) - sb.first_data_block
    at = table.block_bitmap[0] * bs
    bits = _bits(data[at : at + bs], count)
    # the file's last block: the highest block in use; move its bit to the first free block after it
    used = max(i for i, b in enumerate(bits) if b)
    free = next(i for i in range(count) if not bits[i] and i > 0)
    _flip(data, at, used)
    _flip(data, at, free)
    block = sb.first_data_block + used
    assert intact.used_in(block * bs, bs) == [(block * bs, bs)]
    info, amap = allocation_map(BytesSource(bytes(data)))
    assert len(info.warnings) == 1, info.warnings
    assert "group 0: its block bitmap fails its checksum" in info.warnings[0], info.warnings
    end = (sb.first_data_block + sb.group_blocks(0)) * bs
    assert amap.used_in(0, end) == [(0, end)]  # the whole group, the moved block with it


def test_sound_bitmaps_of_a_volume_with_files_pass(tmp_path: Path) -> None:
    """Every bitmap mke2fs wrote (the last group's partial one included) passes: no group is kept whole
    on a sound volume."""
    data = _volume(tmp_path, ("-g", "2048", "-b", "1024"))
    sb = ext.ExtSuper.from_bytes(bytes(data[1024:2048]))
    assert sb is not None and sb.groups > 1
    assert (sb.blocks_count - sb.first_data_block) % sb.blocks_per_group  # a partial last group
    info, amap = allocation_map(BytesSource(bytes(data)))
    assert info.warnings == ()
    assert amap.used_bytes < len(data) // 2
