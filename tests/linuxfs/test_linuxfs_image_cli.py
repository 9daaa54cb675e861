"""``image --used-only`` then ``restore`` of real XFS, Btrfs and LVM2 volumes, through the real CLI."""

# ruff: noqa: F811  (pytest fixtures are imported from lfscases and requested by name)
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import lfsbuild
import pytest
from lfscases import Volume, lvm_volume, tree_dir, volume  # noqa: F401
from test_linuxfs_maps import btrfs_tool_used, xfs_tool_used

from conftest import cli
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import allocation_map, lvm
from imaging_utility.filesystems.lvm_source import LvSource


def image_and_restore(src: Path, tmp: Path, *extra: str) -> tuple[dict[str, object], Path, str]:
    img = tmp / "vol.img.zst"
    proc = cli("image", "--used-only", "--json", *extra, src, img)
    restored = tmp / "restored.img"
    cli("restore", img, restored)
    return json.loads(proc.stdout), restored, proc.stderr


@pytest.mark.parametrize("case_id", ["xfs-v5", "btrfs-default"])
def test_image_used_only_then_restore(case_id: str, volume: Callable[[str], Volume], tmp_path: Path) -> None:
    vol = volume(case_id)
    summary, restored, _ = image_and_restore(vol.path, tmp_path)
    kind = vol.case.kind
    assert lfsbuild.check(restored, kind).returncode == 0
    assert vol.read_files(restored) == vol.expected
    tool = xfs_tool_used(vol.path) if kind == "xfs" else btrfs_tool_used(vol.path)
    assert summary["read_bytes"] == summary["used_bytes"]
    assert abs(summary["read_bytes"] - tool) <= tool * 0.05  # type: ignore[operator]
    info = json.loads(cli("info", "--json", tmp_path / "vol.img.zst").stdout)
    assert info["used_only"]["filesystem"]["type"] == kind
    assert info["layout_bytes"]["unallocated"] > info["source_size"] // 3


def test_lvm_image_used_only_then_restore(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    vol = lvm_volume
    summary, restored, stderr = image_and_restore(vol.path, tmp_path)
    assert f"{vol.vg}/raw: kept in full" in stderr
    assert summary["used_bytes"] < summary["source_size"] * 0.5  # type: ignore[operator]
    lfsbuild.lvm_check(restored, vol.vg)
    for name in ("data", "home"):
        files, rc = lfsbuild.read_lv(vol, restored, name, tmp_path)
        assert rc == 0, f"{name}: the checker found problems"
        assert files == vol.expected[name]
    raw = vol.places["raw"]
    assert lfsbuild.extract_lv(restored, raw, tmp_path / "a").read_bytes() == \
        lfsbuild.extract_lv(vol.path, raw, tmp_path / "b").read_bytes()
    text = cli("info", tmp_path / "vol.img.zst").stdout
    before = cli("info", vol.path).stdout  # the PV itself, before imaging: the same logical volumes
    assert "used-only    lvm2" in text and f"filesystem   lvm2 '{vol.vg}'" in before
    for line in (f"{vol.vg}/data: xfs", f"{vol.vg}/home: ext4", f"{vol.vg}/raw: no known filesystem"):
        assert line in text and line in before, text + before
    disk = tmp_path / "disk.raw"  # the PV as partition 1 of a GPT disk: info names its LVs under the table
    pv = vol.path.read_bytes()
    with open(disk, "wb") as f:
        f.truncate(len(pv) + (2 << 20))
    subprocess.run(["sgdisk", "-n", f"1:2048:+{len(pv) // 512}", "-t", "1:8e00", str(disk)], check=True,
                   capture_output=True)
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(pv)
    text = cli("info", disk).stdout
    assert "  partition 1: LVM2 physical volume" in text and f"    volume     {vol.vg}/data: xfs" in text, text


def test_lvm_free_extents_are_not_read(lvm_volume: lfsbuild.LvmVolume) -> None:
    vol = lvm_volume
    with FileSource(str(vol.path)) as src:
        info, amap = allocation_map(src)
    assert info.type == "lvm2" and info.label == vol.vg
    ends = [off + n for p in vol.places.values() for off, n in p.pieces]
    last = max(ends)
    # Free extents after the last LV, up to the last 4 MiB (the extent remainder) are unused.
    assert not amap.is_used(last, info.volume_size - last - (4 << 20))
    byname = {v.name.split("/")[1]: v for v in info.volumes}
    assert byname["data"].filesystem == "xfs" and byname["home"].filesystem == "ext4"
    assert byname["raw"].used_bytes == 8 << 20 and byname["raw"].note
    assert byname["data"].used_bytes < (64 << 20) * 0.5


def test_lvm_parse_agrees_with_lvs_and_dissect(lvm_volume: lfsbuild.LvmVolume) -> None:
    """Our LV placement equals LVM's own report (``lvs``); dissect.volume reads the same metadata."""
    from dissect.volume.lvm import LVM2

    vol = lvm_volume
    with FileSource(str(vol.path)) as src:
        label = lvm.probe(src)
        assert label is not None
        vg = lvm.read_vg(src, label)
    assert vg.name == vol.vg
    for lv in vg.lvs:
        assert lvm.pv_pieces(vg, lv) == vol.places[lv.name].pieces
        assert lv.size == vol.places[lv.name].size
    with open(vol.path, "rb") as fh:
        theirs = LVM2(fh)
        assert theirs.vg.name == vol.vg
        assert sorted(lv.name for lv in theirs.vg.lv) == sorted(lv.name for lv in vg.lvs)
        for lv in theirs.vg.lv:
            ours = vg.get(lv.name)
            with FileSource(str(vol.path)) as src:
                mine = LvSource(src, vg, ours) if lvm.unreadable_reason(vg, ours) is None else None
                if mine is None:
                    continue
                for off in (0, 4096 * 1000, ours.size - 8192):
                    fh2 = lv.open()
                    fh2.seek(off)
                    buf = bytearray(8192)
                    mine.readinto_at(off, buf)
                    assert fh2.read(8192) == bytes(buf)
