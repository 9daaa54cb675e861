"""Allocation maps of real volumes, proven by used-only copies.

Each volume is built at test time (``tests/fsbuild.py``) over random bytes.  A
"used-only copy" is a zero-filled file of the same size into which only the
mapped ranges are copied; the filesystem's checker must find it clean and every
file must read back identical.  The used counts are also compared with what the
filesystem's own tools report.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import fsbuild
from conftest import need_root, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.extents import AllocationMap
from imaging_utility.filesystems import FilesystemInfo, allocation_map, detect


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # fsbuild kind: ntfs / ext / fat / exfat
    fstype: str
    size_mib: int
    opts: tuple[str, ...] = ()

    def build(self, path: Path, files: Path | None) -> dict[str, str]:
        if self.kind == "ntfs":
            return fsbuild.make_ntfs(path, self.size_mib, files, mkfs_opts=self.opts)
        if self.kind == "ext":
            return fsbuild.make_ext(path, self.size_mib, files, kind=self.fstype, mkfs_opts=self.opts)
        if self.kind == "fat":
            return fsbuild.make_fat(path, self.size_mib, files, fat_bits=int(self.fstype[3:]), mkfs_opts=self.opts)
        return fsbuild.make_exfat(path, self.size_mib, files, mkfs_opts=self.opts)


CASES = [
    Case("ntfs", "ntfs", "ntfs", 32),
    Case("ntfs-512", "ntfs", "ntfs", 24, ("-c", "512")),
    Case("ext4", "ext", "ext4", 32),
    Case("ext4-4k-8groups", "ext", "ext4", 64, ("-b", "4096", "-g", "2048")),
    Case("ext4-no-flex_bg-32bit", "ext", "ext4", 32, ("-O", "^flex_bg,^64bit")),
    Case("ext4-64bit", "ext", "ext4", 32, ("-O", "64bit")),
    Case("ext4-meta_bg", "ext", "ext4", 32, ("-O", "meta_bg,^resize_inode")),
    Case("ext4-uninit_bg", "ext", "ext4", 32, ("-O", "^metadata_csum,uninit_bg")),
    Case("ext3", "ext", "ext3", 32),
    Case("ext2", "ext", "ext2", 32),
    Case("fat12", "fat", "fat12", 15, ("-s", "8")),
    Case("fat16", "fat", "fat16", 32),
    Case("fat32", "fat", "fat32", 40),
    Case("exfat", "exfat", "exfat", 32),
]


def require(case: Case) -> None:
    need_tools(*fsbuild.TOOLS[case.kind])
    if fsbuild.NEEDS_ROOT[case.kind]:
        need_root()


@dataclass
class Volume:
    path: Path
    expected: dict[str, str]
    tree: Path | None

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(k for k in self.expected if ":" in k)


@pytest.fixture(scope="session")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case, bool], Volume]:
    """``volumes(case, populated)``: the case's volume, built once per session."""
    root = tmp_path_factory.mktemp("fsvolumes")
    tree = root / "tree"
    fsbuild.make_tree(tree)
    cache: dict[tuple[str, bool], Volume] = {}

    def get(case: Case, populated: bool = True) -> Volume:
        key = (case.id, populated)
        if key not in cache:
            require(case)
            path = root / f"{case.id}-{'full' if populated else 'empty'}.img"
            files = tree if populated else None
            cache[key] = Volume(path, case.build(path, files), files)
        return cache[key]

    return get


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


def _num(pattern: str, text: str) -> int:
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not found in tool output:\n{text}"
    return int(m.group(1))


def tool_used_units(case: Case, path: Path) -> tuple[int, int]:
    """(used units, unit size) inside the allocatable area, as the filesystem's own tool counts them."""
    def out(*cmd: str) -> str:
        return subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=False).stdout

    if case.kind == "ext":
        text = out("dumpe2fs", "-h")
        total, free, size = (_num(rf"^{k}:\s+(\d+)", text) for k in ("Block count", "Free blocks", "Block size"))
        return total - free, size
    if case.kind == "fat":
        text = out("fsck.vfat", "-n", "-v")
        return _num(r"(\d+)/\d+ clusters", text), _num(r"(\d+) bytes per cluster", text)
    if case.kind == "exfat":
        text = out("dump.exfat")
        total, free, size = (_num(rf"{k}:\s+(\d+)", text) for k in ("Total Clusters", "Free Clusters", "Cluster size"))
        return total - free, size
    text = out("ntfsinfo", "-m")
    total, free, size = (_num(rf"{k}:\s+(\d+)", text)
                         for k in ("Volume Size in Clusters", "Free Clusters", "Cluster Size"))
    return total - free, size


def dissect_params(case: Case, path: Path) -> tuple[str, int]:
    """(type, cluster size) according to the dissect parsers, an independent implementation."""
    from dissect.extfs import ExtFS
    from dissect.fat import FATFS, ExFAT
    from dissect.ntfs import NTFS

    with open(path, "rb") as fh:
        if case.kind == "ntfs":
            return "ntfs", int(NTFS(fh).cluster_size)
        if case.kind == "ext":
            return case.fstype, int(ExtFS(fh).block_size)
        if case.kind == "exfat":
            return "exfat", int(ExFAT(fh).cluster_size)
        fs = FATFS(fh)
        return fs.type.name.lower(), int(fs.cluster_size)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_detect(case: Case, volumes: Callable[[Case, bool], Volume]) -> None:
    vol = volumes(case, True)
    with FileSource(str(vol.path)) as src:
        info = detect(src)
    assert info is not None
    fstype, cluster = dissect_params(case, vol.path)
    assert (info.type, info.cluster_size) == (case.fstype, cluster)
    assert fstype == case.fstype
    assert info.volume_size == case.size_mib << 20  # mkfs used the whole file
    assert info.label is not None and info.label.lower() == "testvol"
    assert info.serial


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_used_only_copy_is_clean_and_complete(
    case: Case, volumes: Callable[[Case, bool], Volume], tmp_path: Path
) -> None:
    vol = volumes(case, True)
    info, amap = mapped(vol.path)
    assert amap.size == os.path.getsize(vol.path) and amap.cluster_size == info.cluster_size
    assert info.warnings == (), info.warnings  # a healthy volume: nothing kept whole, nothing to say
    copy = tmp_path / "copy.img"
    used_only_copy(vol.path, copy, amap)
    check = fsbuild.fsck(copy, case.kind)
    assert check.returncode == 0, f"{case.id}: checker found problems:\n{check.stdout}\n{check.stderr}"
    assert fsbuild.read_files(copy, case.kind, vol.streams) == vol.expected
    # The files' data (holes of sparse files excluded) cannot fit in fewer bytes than mapped.
    assert vol.tree is not None
    data = sum(min(st.st_size, st.st_blocks * 512) for st in (p.stat() for p in vol.tree.rglob("*") if p.is_file()))
    assert amap.used_bytes >= data
    assert amap.used_bytes < amap.size


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_used_units_equal_the_tools_count(case: Case, volumes: Callable[[Case, bool], Volume]) -> None:
    """Inside the allocatable area the map marks exactly what the filesystem's own tool counts."""
    vol = volumes(case, True)
    info, amap = mapped(vol.path)
    used, unit = tool_used_units(case, vol.path)
    assert unit == info.cluster_size
    with FileSource(str(vol.path)) as src:
        if case.kind == "ext":
            start, length = 0, info.volume_size
        elif case.kind == "ntfs":
            from imaging_utility.filesystems import ntfs

            nboot = ntfs.probe(src)
            assert nboot is not None
            start, length = 0, nboot.total_clusters * unit
        elif case.kind == "fat":
            from imaging_utility.filesystems import fat

            boot = fat.probe(src)
            assert boot is not None
            start, length = boot.data_offset, boot.cluster_count * unit
        else:
            from imaging_utility.filesystems import exfat

            xboot = exfat.probe(src)
            assert xboot is not None
            start, length = xboot.heap, xboot.cluster_count * unit
    got = sum(n for _, n in amap.used_in(start, length))
    assert got % unit == 0
    assert got // unit == used


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("ntfs", "ext4", "ext2", "fat16", "fat32", "exfat")],
                         ids=lambda c: c.id)
def test_empty_volume_maps_little(case: Case, volumes: Callable[[Case, bool], Volume]) -> None:
    vol = volumes(case, False)
    _, amap = mapped(vol.path)
    # Only metadata and the small fragmentation files: ext4 carries a 4 MiB journal and NTFS a
    # 2.5 MiB $LogFile (on 32 MiB); FAT and exFAT need a few percent.
    limit = {"ext": 0.25, "ntfs": 0.15}.get(case.kind, 0.1)
    assert amap.used_bytes < amap.size * limit, amap


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("ntfs", "ext4", "fat32", "exfat")],
                         ids=lambda c: c.id)
def test_copy_missing_one_extent_is_caught(
    case: Case, volumes: Callable[[Case, bool], Volume], tmp_path: Path
) -> None:
    """Control: the checks above do notice a map that misses used data."""
    vol = volumes(case, True)
    _, amap = mapped(vol.path)
    biggest = max(amap, key=lambda e: e.length)
    holed = AllocationMap(((e.offset, e.length) for e in amap if e != biggest), amap.size)
    copy = tmp_path / "holed.img"
    used_only_copy(vol.path, copy, holed)
    check = fsbuild.fsck(copy, case.kind)
    try:
        files = fsbuild.read_files(copy, case.kind, vol.streams)
    except (RuntimeError, OSError):
        files = {}
    assert check.returncode != 0 or files != vol.expected


def test_ext_block_uninit_groups_are_covered(volumes: Callable[[Case, bool], Volume]) -> None:
    """The 8-group ext4 case really has BLOCK_UNINIT groups holding superblock backups."""
    case = next(c for c in CASES if c.id == "ext4-4k-8groups")
    vol = volumes(case, True)
    text = subprocess.run(["dumpe2fs", str(vol.path)], capture_output=True, text=True, check=True).stdout
    uninit_with_backup = re.findall(r"^Group (\d+):.*BLOCK_UNINIT.*\n\s+(?:Primary|Backup) superblock", text, re.M)
    assert uninit_with_backup, "no BLOCK_UNINIT group with a superblock backup: the case lost its point"


def fragments(case: Case, path: Path, rel: str) -> int:
    """How many separate pieces the file ``rel`` occupies on the volume."""
    if case.kind == "ext":
        text = subprocess.run(["debugfs", "-R", f"stat /{rel}", str(path)], capture_output=True, text=True).stdout
        return len(re.findall(r"\(\d+(?:-\d+)?\):\d+", text.split("EXTENTS:", 1)[1]))
    if case.kind == "fat":
        text = subprocess.run(["mshowfat", "-i", str(path), f"::/{rel}"], capture_output=True, text=True).stdout
        return text.count("<")
    if case.kind == "ntfs":
        from dissect.ntfs import NTFS

        with open(path, "rb") as fh:
            return len(NTFS(fh).mft.get(rel).dataruns())
    from dissect.fat import ExFAT

    with open(path, "rb") as fh:
        fs = ExFAT(fh)
        node = fs.files["/"]
        for part in rel.split("/"):
            node = node[1][part]
        chain = fs.get_cluster_chain(node[0].stream.location)
        return 1 + sum(1 for a, b in itertools.pairwise(chain) if b != a + 1)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("ntfs", "ext4", "fat16", "fat32", "exfat")],
                         ids=lambda c: c.id)
def test_fixture_file_is_really_fragmented(case: Case, volumes: Callable[[Case, bool], Volume]) -> None:
    vol = volumes(case, True)
    assert fragments(case, vol.path, "frag/fragmented.bin") >= 2
