"""A FAT volume whose directories name clusters its FAT marks free (``fat_check``): a file written by a
device that keeps no dirty flag and then unplugged, or damage since.  Used-only imaging maps from the FAT,
so it would drop that file's data: it refuses the volume instead (auto images it in full).  The volumes
are made by ``mkfs.vfat`` and mtools; the FAT entries are then cleared as a lost FAT write leaves them."""

from __future__ import annotations

from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import fat, fat_check
from imaging_utility.filesystems._bitmap import RunList
from imaging_utility.filesystems.fat_dir import FatNode, FatVolume


def _entry(vol: Path, path: str) -> tuple[fat.FatBoot, FatNode]:
    with FileSource(str(vol)) as src:
        boot = fat.probe(src)
        assert boot is not None
        volume = FatVolume(src, boot)
        node = volume.root()
        for part in path.strip("/").split("/"):
            node = dict(volume.entries(node))[part]
        return boot, node


def _set_fat(vol: Path, boot: fat.FatBoot, cluster: int, value: int, copies: range | None = None) -> None:
    """Write FAT entry ``cluster`` of every copy (or of ``copies``)."""
    with open(vol, "r+b") as f:
        for copy in copies if copies is not None else range(boot.num_fats):
            base = (boot.reserved_sectors + copy * boot.fat_sectors) * boot.bytes_per_sector
            if boot.bits == 12:
                at = base + cluster + cluster // 2
                f.seek(at)
                old = int.from_bytes(f.read(2), "little")
                new = (old & 0x000F) | (value << 4) if cluster & 1 else (old & 0xF000) | value
                f.seek(at)
                f.write(new.to_bytes(2, "little"))
            else:
                size = boot.bits // 8
                f.seek(base + cluster * size)
                f.write(value.to_bytes(size, "little"))


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_a_file_whose_fat_chain_was_never_written(bits: int, tmp_path: Path) -> None:
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    fsbuild.make_fat(vol, 40 if bits != 12 else 8, None, fat_bits=bits)
    cli("image", "--used-only", vol, tmp_path / "clean.img")  # as made, the directories agree with the FAT
    boot, node = _entry(vol, "/frag/fragmented.bin")
    assert node.size and node.cluster >= 2
    data = vol.read_bytes()[boot.data_offset + (node.cluster - 2) * boot.cluster_size:][:boot.cluster_size]
    _set_fat(vol, boot, node.cluster, 0)
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert (f"its file /frag/fragmented.bin starts at cluster {node.cluster}, which the FAT marks free"
            in proc.stderr), proc.stderr
    proc = cli("image", "--used-only=auto", vol, tmp_path / "auto.img")
    assert "which the FAT marks free" in proc.stderr
    cli("restore", tmp_path / "auto.img", tmp_path / "back.raw")
    back = (tmp_path / "back.raw").read_bytes()
    assert back == vol.read_bytes()  # imaged in full: the lost file's clusters are kept
    assert data in back


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_a_chain_that_runs_into_a_free_cluster(bits: int, tmp_path: Path) -> None:
    """The file starts on a used cluster, but its chain links on to one the FAT marks free (its FAT
    entry was never written): found from the FAT itself, without following chains."""
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    fsbuild.make_fat(vol, 40 if bits != 12 else 8, None, fat_bits=bits)
    boot, node = _entry(vol, "/frag/fragmented.bin")
    with FileSource(str(vol)) as src:
        second = FatVolume(src, boot).next_of(node.cluster)
    assert 2 <= second < boot.cluster_count + 2
    _set_fat(vol, boot, second, 0)
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"its FAT links cluster {node.cluster} to cluster {second}, which the FAT marks free" in proc.stderr


def test_a_directory_on_a_free_cluster_and_one_whose_chain_loops(tmp_path: Path) -> None:
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    fsbuild.make_fat(vol, 40, None, fat_bits=32)
    boot, node = _entry(vol, "/frag")
    original = vol.read_bytes()
    _set_fat(vol, boot, node.cluster, 0)
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert f"its directory /frag starts at cluster {node.cluster}, which the FAT marks free" in proc.stderr
    vol.write_bytes(original)
    _set_fat(vol, boot, node.cluster, node.cluster)  # the directory's chain comes back to itself
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "a directory cannot be read to check it against the FAT" in proc.stderr
    assert "loops" in proc.stderr, proc.stderr


def test_one_fat_copy_that_still_has_the_file_keeps_it(tmp_path: Path) -> None:
    """Used-only keeps the union of the FAT copies; a file the second copy still holds is in that map."""
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    fsbuild.make_fat(vol, 40, None, fat_bits=16)
    boot, node = _entry(vol, "/frag/fragmented.bin")
    assert boot.num_fats == 2
    _set_fat(vol, boot, node.cluster, 0, range(1))
    cli("image", "--used-only", vol, tmp_path / "x.img")
    cli("restore", tmp_path / "x.img", tmp_path / "back.raw")
    at = boot.data_offset + (node.cluster - 2) * boot.cluster_size
    kept = (tmp_path / "back.raw").read_bytes()[at : at + boot.cluster_size]
    assert kept == vol.read_bytes()[at : at + boot.cluster_size]


@pytest.mark.parametrize(("targets", "found"), [
    ([5, 9, 30], 30),  # fewer targets than free runs: each target is looked up among the runs
    ([5, 9, 11, 12, 13, 14, 15, 16, 17], None),  # more targets: each run is looked up among them
    ([5, 9, 11, 12, 13, 14, 15, 16, 25], 25),
    ([], None),
])
def test_links_are_matched_against_the_free_runs_either_way(targets: list[int], found: int | None) -> None:
    used = RunList()
    used.extend([(2, 20), (22, 24), (26, 28), (32, 40)])
    free = fat_check._gaps([used], 40)
    assert free == [(20, 22), (24, 26), (28, 32)]
    assert fat_check._first_in(targets, free, [lo for lo, _ in free]) == found
