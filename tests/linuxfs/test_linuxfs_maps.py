"""XFS and Btrfs allocation maps on real, aged volumes, proven by used-only copies and the filesystems' own tools.

A "used-only copy" is a zero-filled file into which only the mapped ranges are copied.  The
filesystem's checker (``xfs_repair -n``, ``btrfs check --readonly``) must find it clean, a kernel
mount must read every file identical, and the mapped bytes must be within 5% of what the
filesystem's own tools count as used.  The maps are also compared exactly with ``xfs_db`` free
space and with the extents ``btrfs inspect-internal dump-tree`` lists.
"""

# ruff: noqa: F811  (pytest fixtures are imported from lfscases and requested by name)
from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import lfsbuild
import pytest
from lfscases import CASES, Case, Volume, tree_dir, volume  # noqa: F401

from imaging_utility.devices.source import FileSource
from imaging_utility.extents import AllocationMap
from imaging_utility.filesystems import FilesystemInfo, allocation_map, detect

XFS = [c for c in CASES if c.kind == "xfs"]
BTRFS = [c for c in CASES if c.kind == "btrfs"]


def mapped(path: Path) -> tuple[FilesystemInfo, AllocationMap]:
    with FileSource(str(path)) as src:
        return allocation_map(src)


def used_only_copy(src_path: Path, dst: Path, amap: AllocationMap) -> None:
    with open(src_path, "rb") as src, open(dst, "wb") as out:
        out.truncate(amap.size)
        for ext in amap:
            src.seek(ext.offset)
            out.seek(ext.offset)
            out.write(src.read(ext.length))


def out(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout


def xfs_fields(path: Path, *cmds: str) -> dict[str, int]:
    args = [a for c in cmds for a in ("-c", c)]
    return {k: int(v) for k, v in re.findall(r"^(\w+) = (\d+)$", out("xfs_db", "-r", *args, path), re.M)}


def xfs_tool_used(path: Path) -> int:
    sb = xfs_fields(path, "sb 0", "p dblocks fdblocks blocksize")
    return (sb["dblocks"] - sb["fdblocks"]) * sb["blocksize"]


def btrfs_tool_used(path: Path) -> int:
    """Bytes on the device the block groups say are used (DUP twice), plus the reserved first MiB."""
    text = out("btrfs", "inspect-internal", "dump-tree", "-t", "extent", path)
    total = 0
    for used, flags in re.findall(r"block group used (\d+) chunk_objectid \d+ flags (\S+)", text):
        total += int(used) * (2 if "DUP" in flags else 1)
    return total + (1 << 20)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_used_only_copy_is_clean_and_complete(case: Case, volume: Callable[[str], Volume], tmp_path: Path) -> None:
    vol = volume(case.id)
    info, amap = mapped(vol.path)
    assert info.type == case.kind and info.label == "testvol" and info.volume_size == case.size_mib << 20
    with FileSource(str(vol.path)) as src:
        assert detect(src) == info
    copy = tmp_path / "copy.img"
    used_only_copy(vol.path, copy, amap)
    checked = lfsbuild.check(copy, case.kind)
    assert checked.returncode == 0, f"{case.id}: checker found problems:\n{checked.stdout}\n{checked.stderr}"
    assert vol.read_files(copy) == vol.expected
    tool = xfs_tool_used(vol.path) if case.kind == "xfs" else btrfs_tool_used(vol.path)
    assert abs(amap.used_bytes - tool) <= tool * 0.05, (amap.used_bytes, tool)
    assert amap.used_bytes < amap.size * 0.8


@pytest.mark.parametrize("case", XFS, ids=lambda c: c.id)
def test_xfs_free_space_equals_xfs_db(case: Case, volume: Callable[[str], Volume]) -> None:
    """Unmapped blocks are exactly xfs_db's free blocks less the AGFL blocks (free, but reserved)."""
    vol = volume(case.id)
    info, amap = mapped(vol.path)
    agcount = xfs_fields(vol.path, "sb 0", "p agcount")["agcount"]
    flcount = sum(xfs_fields(vol.path, f"agf {a}", "p flcount")["flcount"] for a in range(agcount))
    free = int(re.search(r"total free blocks (\d+)", out("xfs_db", "-r", "-c", "freesp -s", vol.path)).group(1))
    assert (amap.size - amap.used_bytes) // info.cluster_size == free - flcount


def test_xfs_deep_case_has_a_two_level_bnobt(volume: Callable[[str], Volume]) -> None:
    vol = volume("xfs-1k-2ag-deep")
    assert max(xfs_fields(vol.path, f"agf {a}", "p bnolevel")["bnolevel"] for a in (0, 1)) >= 2


def _dump_tree_used(path: Path, info: FilesystemInfo) -> AllocationMap:
    """Physical ranges of every extent ``dump-tree`` lists, mapped through the chunks it lists."""
    chunks = []
    for text in re.split(r"\n(?=\titem \d+ key)", out("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", path)):
        m = re.search(r"key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\).*?length (\d+)", text, re.S)
        if m:
            chunks.append((int(m[1]), int(m[2]), [int(s) for s in re.findall(r"offset (\d+)\s+dev_uuid", text)]))
    nodesize = int(re.search(r"^nodesize\s+(\d+)", out("btrfs", "inspect-internal", "dump-super", path), re.M)[1])
    ranges = [(0, 1 << 20)] + [(m, 4096) for m in (65536, 64 << 20) if m + 4096 <= info.volume_size]
    for start, kind, arg in re.findall(r"key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)",
                                       out("btrfs", "inspect-internal", "dump-tree", "-t", "extent", path)):
        length = int(arg) if kind == "EXTENT_ITEM" else nodesize
        logical, _size, stripes = next(c for c in chunks if c[0] <= int(start) < c[0] + c[1])
        ranges += [(s + int(start) - logical, length) for s in stripes]
    return AllocationMap(ranges, info.volume_size, info.cluster_size)


@pytest.mark.parametrize("case", BTRFS, ids=lambda c: c.id)
def test_btrfs_map_equals_dump_tree(case: Case, volume: Callable[[str], Volume]) -> None:
    vol = volume(case.id)
    info, amap = mapped(vol.path)
    assert amap == _dump_tree_used(vol.path, info)


@pytest.mark.parametrize("case", BTRFS, ids=lambda c: c.id)
def test_btrfs_chunk_map_agrees_with_dissect(case: Case, volume: Callable[[str], Volume]) -> None:
    from dissect.btrfs import Btrfs

    from imaging_utility.filesystems import btrfs

    vol = volume(case.id)
    with FileSource(str(vol.path)) as src, open(vol.path, "rb") as fh:
        sb = btrfs.probe(src)
        assert sb is not None
        ours = btrfs.read_chunks(src, sb)
        theirs = Btrfs(fh)._logical_fh
        for ch in ours.chunks:
            for probe in (ch.logical, ch.logical + ch.length // 2, ch.end - 4096):
                theirs.seek(probe)
                a = theirs.read(4096)
                b = bytearray(4096)
                src.readinto_at(ch.stripes[0] + probe - ch.logical, b)
                assert a == bytes(b)


def test_btrfs_deep_case_has_a_multi_level_extent_tree(volume: Callable[[str], Volume]) -> None:
    vol = volume("btrfs-4k-nodes-deep")
    text = out("btrfs", "inspect-internal", "dump-tree", "-t", "extent", vol.path)
    assert re.search(r"^node \d+ level [1-9]", text, re.M), text[:500]


@pytest.mark.parametrize("case_id", ["xfs-v5", "btrfs-default"])
def test_copy_missing_one_extent_is_caught(case_id: str, volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """Control: the checks above notice a map that misses used data."""
    vol = volume(case_id)
    _, amap = mapped(vol.path)
    data = [e for e in amap if e.offset >= 2 << 20]
    biggest = max(data, key=lambda e: e.length)
    holed = AllocationMap(((e.offset, e.length) for e in amap if e != biggest), amap.size)
    copy = tmp_path / "holed.img"
    used_only_copy(vol.path, copy, holed)
    try:
        files = vol.read_files(copy)
    except (RuntimeError, OSError):  # a failed mount, or EIO from Btrfs data checksums
        files = {}
    assert lfsbuild.check(copy, vol.case.kind).returncode != 0 or files != vol.expected


@pytest.mark.parametrize(("kind", "size_mib", "mkfs"), [
    ("xfs", 64, ("mkfs.xfs", "-q", "-f", "--unsupported")),
    ("btrfs", 128, ("mkfs.btrfs", "-q", "-f")),
])
def test_fresh_volume_maps_little_and_copies_clean(kind: str, size_mib: int, mkfs: tuple[str, ...],
                                                   tmp_path: Path) -> None:
    """Straight from mkfs over random bytes: only the metadata (and XFS's log) is mapped."""
    from lfscases import require

    import fsbuild

    require(kind)
    path = tmp_path / f"fresh-{kind}.img"
    fsbuild.random_image(path, size_mib, 31)
    lfsbuild.run(*mkfs, path)
    _, amap = mapped(path)
    assert amap.used_bytes < amap.size * (0.25 if kind == "xfs" else 0.1), amap
    copy = tmp_path / "copy.img"
    used_only_copy(path, copy, amap)
    assert lfsbuild.check(copy, kind).returncode == 0
    assert lfsbuild.read_tree(copy) == {}
