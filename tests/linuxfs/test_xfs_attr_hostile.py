"""Damaged XFS attribute blocks (``xfs_attr``): each is one clear error for that file's extended attributes,
never wrong values, a hang or a traceback; ``extract`` restores everything else and exits 3 naming the file.
Blocks are found with ``xfs_db`` (``bmap -a``) on a volume written by the kernel; damage that keeps the
block's CRC valid has its CRC recomputed, as a buggy or hostile writer would leave it."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from files import metatrees as mt
from imaging_utility.crc32c import crc32c
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems.tree import open_tree


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple[int, int, int]]]]:
    """An XFS volume: ``node`` (600 attributes: a node over leaves), ``remote`` (a 20,000-byte value),
    ``plain`` (no attributes); with each file's attribute extents (file block, volume block, count)."""
    need_root()
    need_tools("mkfs.xfs", "xfs_db")
    vol = tmp_path_factory.mktemp("xfsattr") / "xfs.raw"
    with open(vol, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-f", "-q", vol], check=True, capture_output=True)
    with mt.kernel_mount(vol) as m:
        (m / "node").write_bytes(b"node\n")
        for i in range(600):
            os.setxattr(m / "node", f"user.attr{i:04d}", bytes([i % 251]) * (i % 300))
        (m / "remote").write_bytes(b"remote\n")
        os.setxattr(m / "remote", "user.big", bytes(range(256)) * 80)
        (m / "plain").write_bytes(b"plain\n")
        inodes = {name: os.stat(m / name).st_ino for name in ("node", "remote")}
    maps: dict[str, list[tuple[int, int, int]]] = {}
    for name, ino in inodes.items():
        out = subprocess.run(["xfs_db", "-r", "-c", f"inode {ino}", "-c", "bmap -a", vol], check=True,
                             capture_output=True, text=True).stdout
        maps[name] = [(int(a), int(b), int(c)) for a, b, c in
                      re.findall(r"attr offset (\d+) startblock (\d+) \(\S+\) count (\d+)", out)]
        assert maps[name], out
    return vol, maps


def _damaged(vol: Path, tmp_path: Path, volume_block: int, change: dict[int, bytes], fix_crc: bool) -> Path:
    copy = tmp_path / "vol.raw"
    copy.write_bytes(vol.read_bytes())
    at = volume_block * 4096
    with open(copy, "r+b") as f:
        f.seek(at)
        block = bytearray(f.read(4096))
        for off, data in change.items():
            block[off : off + len(data)] = data
        if fix_crc:
            block[12:16] = bytes(4)
            block[12:16] = crc32c(bytes(block)).to_bytes(4, "little")
        f.seek(at)
        f.write(block)
    return copy


def _refused(vol: Path, path: str, tmp_path: Path, needle: str) -> None:
    with FileSource(str(vol)) as src:
        tree = open_tree(src)
        with pytest.raises(CorruptImageError) as exc:
            tree.xattrs(path)
        assert needle in str(exc.value) and "\n" not in str(exc.value), exc.value
        assert tree.xattrs("/plain") == []
    proc = cli("extract", vol, "/", tmp_path / "out", check=3)
    assert f"{path}: extended attributes not restored" in proc.stderr and needle in proc.stderr, proc.stderr
    assert (tmp_path / "out" / path.lstrip("/")).read_bytes() == path.lstrip("/").encode() + b"\n"
    assert (tmp_path / "out" / "plain").read_bytes() == b"plain\n"


def _block_of(extents: list[tuple[int, int, int]], dablk: int) -> int:
    return next(vb + dablk - fb for fb, vb, n in extents if fb <= dablk < fb + n)


def test_a_leaf_failing_its_crc(volume: tuple[Path, dict[str, list[tuple[int, int, int]]]], tmp_path: Path) -> None:
    vol, maps = volume
    leaf = _block_of(maps["node"], 1)  # block 0 is the node; the leaves follow
    bad = _damaged(vol, tmp_path, leaf, {4000: b"\xff\xff"}, fix_crc=False)
    _refused(bad, "/node", tmp_path, "attribute block 1 fails its checksum")


def test_leaves_that_link_in_a_loop(volume: tuple[Path, dict[str, list[tuple[int, int, int]]]],
                                    tmp_path: Path) -> None:
    vol, maps = volume
    with FileSource(str(vol)) as src:
        assert len(open_tree(src).xattrs("/node")) == 600
    # walk the leaves from the node's first as the reader does; the last one's forw becomes the first
    first = struct.unpack(">I", vol.read_bytes()[_block_of(maps["node"], 0) * 4096 + 64 + 4 :][:4])[0]
    raw = vol.read_bytes()
    dablk = first
    while True:
        forw = struct.unpack_from(">I", raw, _block_of(maps["node"], dablk) * 4096)[0]
        if not forw:
            break
        dablk = forw
    assert dablk != first
    bad = _damaged(vol, tmp_path, _block_of(maps["node"], dablk), {0: struct.pack(">I", first)}, fix_crc=True)
    _refused(bad, "/node", tmp_path, f"attribute leaf {dablk} links back to leaf {first}")


def test_a_leaf_claiming_more_entries_than_fit(volume: tuple[Path, dict[str, list[tuple[int, int, int]]]],
                                               tmp_path: Path) -> None:
    vol, maps = volume
    leaf = _block_of(maps["node"], 1)
    bad = _damaged(vol, tmp_path, leaf, {56: struct.pack(">H", 65535)}, fix_crc=True)
    _refused(bad, "/node", tmp_path, "attribute leaf 1 claims 65535 entries")


def test_a_remote_value_block_out_of_place(volume: tuple[Path, dict[str, list[tuple[int, int, int]]]],
                                           tmp_path: Path) -> None:
    """A remote value block whose header says it holds another part of the value: an error, not a value
    stitched from the wrong pieces."""
    vol, maps = volume
    with FileSource(str(vol)) as src:
        assert dict(open_tree(src).xattrs("/remote"))["user.big"] == bytes(range(256)) * 80
    remote = _block_of(maps["remote"], 1)  # block 0 is the leaf; the value's first block follows
    head = vol.read_bytes()[remote * 4096 : remote * 4096 + 12]
    assert head[:4] == b"XARM" and struct.unpack(">I", head[4:8])[0] == 0
    bad = _damaged(vol, tmp_path, remote, {4: struct.pack(">I", 4040)}, fix_crc=True)
    _refused(bad, "/remote", tmp_path, "remote block 1 has magic b'XARM', offset 4040")
