"""XFS and Btrfs partitions of a whole disk are imaged used-only through the generic allocation maps, and
come back clean with every file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import fsbuild
from backup.diskbuild import MiB, splice
from conftest import cli, need_root, need_tools
from imaging_utility.image.reader import open_image
from linuxfs import lfsbuild


def test_xfs_and_btrfs_partitions_used_only(tmp_path: Path) -> None:
    need_root()
    need_tools("sgdisk", "zstd", *lfsbuild.TOOLS["xfs"], *lfsbuild.TOOLS["btrfs"])
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 184, seed=31)
    subprocess.run(["sgdisk", "-n", "1:1M:+48M", "-t", "1:8300", "-n", "2:0:+128M", "-t", "2:8300", str(disk)],
                   check=True, capture_output=True)
    trees = {}
    for number, kind, offset, size in ((1, "xfs", 1, 48), (2, "btrfs", 49, 128)):
        vol = tmp_path / f"{kind}.raw"
        build = lfsbuild.make_xfs if kind == "xfs" else lfsbuild.make_btrfs
        trees[number] = (kind, offset, size, build(vol, size, None))
        splice(disk, offset * MiB, vol)
        vol.unlink()
    img = tmp_path / "disk.img"
    cli("image", "--used-only", disk, img)
    with open_image(str(img)) as reader:
        parts = reader.header.meta["disk"]["partitions"]
    assert [(p["filesystem"]["type"], p["kept"]) for p in parts] == [("xfs", "used-only"), ("btrfs", "used-only")]
    assert all(p["used_bytes"] < p["length"] // 2 for p in parts)
    raw = tmp_path / "back.raw"
    with open(raw, "wb") as out:
        subprocess.run(["zstd", "-dc", str(img)], stdout=out, check=True)
    for kind, offset, size, expected in trees.values():
        part = tmp_path / f"{kind}-back.raw"
        with open(raw, "rb") as src, open(part, "wb") as dst:
            src.seek(offset * MiB)
            dst.write(src.read(size * MiB))
        assert lfsbuild.check(part, kind).returncode == 0
        assert lfsbuild.read_tree(part) == expected
