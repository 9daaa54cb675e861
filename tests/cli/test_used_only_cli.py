"""Used-only imaging end to end: real filesystems → image --used-only → restore → fsck + every file equal."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imagetools import data_frames
from imaging_utility.devices.source import FileSource
from imaging_utility.extents import ExtentKind
from imaging_utility.filesystems import allocation_map
from imaging_utility.image.reader import open_image
from imaging_utility.ops.capture import CaptureOptions, capture

MiB = 1 << 20

# (id, family, builder, size MiB)
VOLUMES: list[tuple[str, str, Callable[[Path, Path], dict[str, str]]]] = [
    ("ntfs", "ntfs", lambda p, f: fsbuild.make_ntfs(p, 48, f)),
    ("ext4", "ext", lambda p, f: fsbuild.make_ext(p, 48, f)),
    ("ext4-noflexbg", "ext", lambda p, f: fsbuild.make_ext(p, 48, f, mkfs_opts=("-O", "^flex_bg"))),
    ("ext4-64bit", "ext", lambda p, f: fsbuild.make_ext(p, 48, f, mkfs_opts=("-O", "64bit"))),
    ("ext2", "ext", lambda p, f: fsbuild.make_ext(p, 32, f, kind="ext2")),
    ("fat12", "fat", lambda p, f: fsbuild.make_fat(p, 16, f, fat_bits=12)),
    ("fat16", "fat", lambda p, f: fsbuild.make_fat(p, 32, f, fat_bits=16)),
    ("fat32", "fat", lambda p, f: fsbuild.make_fat(p, 48, f, fat_bits=32, mkfs_opts=("-s", "1"))),
    ("exfat", "exfat", lambda p, f: fsbuild.make_exfat(p, 48, f)),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tree")
    fsbuild.make_tree(d, large_mib=2)
    return d


def _need(family: str) -> None:
    need_tools(*fsbuild.TOOLS[family])
    if fsbuild.NEEDS_ROOT[family]:
        need_root()


@pytest.mark.parametrize(("name", "family", "build"), VOLUMES, ids=[v[0] for v in VOLUMES])
def test_used_only_image_restores_a_clean_identical_volume(tmp_path: Path, tree: Path, name: str, family: str,
                                                           build: Callable[[Path, Path], dict[str, str]]) -> None:
    _need(family)
    vol = tmp_path / f"{name}.raw"
    expected = build(vol, tree)
    img = tmp_path / "used.img"
    out = json.loads(cli("image", "--used-only", "--json", "--chunk-size", "256K", vol, img).stdout)
    full = json.loads(cli("image", "--json", "--chunk-size", "256K", vol, tmp_path / "full.img").stdout)
    free = vol.stat().st_size - out["used_bytes"]
    assert free > vol.stat().st_size / 10
    # free space was random (incompressible) bytes: leaving it out must save about all of it
    assert full["image_bytes"] - out["image_bytes"] > 0.9 * free, (out, full)
    assert out["read_bytes"] == out["used_bytes"] < vol.stat().st_size
    info = json.loads(cli("info", "--json", img).stdout)
    assert info["used_only"]["filesystem"]["type"].startswith(family if family != "fat" else "fat")
    assert info["used_only"]["used_bytes"] == out["used_bytes"]
    human = cli("info", img).stdout
    assert "used-only" in human and "cluster" in human
    assert info["layout_bytes"]["unallocated"] > 0
    cli("verify", img)
    restored = tmp_path / "restored.raw"
    cli("restore", img, restored)
    check = fsbuild.fsck(restored, family)
    assert check.returncode == 0, check.stdout + check.stderr
    streams = tuple(k for k in expected if ":" in k)
    assert fsbuild.read_files(restored, family, streams) == expected


class CountingSource:
    """A BlockSource wrapper counting the bytes read through it."""

    def __init__(self, base: FileSource) -> None:
        self.base = base
        self.read_bytes = 0
        self.size = base.size
        self.sector_size = base.sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        self.read_bytes += len(buf)
        self.base.readinto_at(offset, buf)

    def extents(self, offset: int, length: int) -> list[object]:
        return self.base.extents(offset, length)  # type: ignore[return-value]


@pytest.mark.parametrize("family", ["ext", "fat"])
def test_bytes_read_are_the_used_bytes(tmp_path: Path, tree: Path, family: str) -> None:
    _need(family)
    vol = tmp_path / "v.raw"
    if family == "ext":
        fsbuild.make_ext(vol, 64, tree)
    else:
        fsbuild.make_fat(vol, 64, tree)
    with FileSource(str(vol)) as fs:
        src = CountingSource(fs)
        _, amap = allocation_map(src)  # type: ignore[arg-type]
        metadata_reads = src.read_bytes
        src.read_bytes = 0
        capture(src, str(tmp_path / "i.img"), CaptureOptions(chunk_size=256 * 1024, allocation=amap))  # type: ignore[arg-type]
    assert src.read_bytes == amap.used_bytes
    assert amap.used_bytes + metadata_reads <= 1.05 * amap.used_bytes + MiB
    assert amap.used_bytes < vol.stat().st_size / 2


def test_used_only_kill_9_resume_identical(tmp_path: Path, tree: Path) -> None:
    _need("ext")
    vol = tmp_path / "v.raw"
    fsbuild.make_ext(vol, 96, tree)
    args = ["--used-only", "--chunk-size", "64K", "--threads", "1", "--level", "9"]
    cli("image", *args, vol, tmp_path / "ref.img")
    total = (tmp_path / "ref.img").stat().st_size
    img = tmp_path / "k.img"
    rng = random.Random(7)
    kills = 0
    for i, target in enumerate(sorted(rng.uniform(0.1, 0.9) * total for _ in range(3))):
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "image", *args,
                                 *(["--resume"] if i else []), str(vol), str(img)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and (not img.exists() or img.stat().st_size < target):
            time.sleep(0.001)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    out = json.loads(cli("image", *args, "--resume", "--json", vol, img).stdout)
    assert kills >= 2
    assert out["resumed_at"] > 0
    assert data_frames(img) == data_frames(tmp_path / "ref.img")
    a = json.loads(cli("info", "--json", img).stdout)
    b = json.loads(cli("info", "--json", tmp_path / "ref.img").stdout)
    assert a["digests"] == b["digests"]


def test_used_only_resume_reads_no_earlier_range(tmp_path: Path, tree: Path) -> None:
    _need("ext")
    vol = tmp_path / "v.raw"
    fsbuild.make_ext(vol, 48, tree)
    with FileSource(str(vol)) as fs:
        _, amap = allocation_map(fs)
        capture(fs, str(tmp_path / "ref.img"), CaptureOptions(chunk_size=64 * 1024, allocation=amap))
        raw = (tmp_path / "ref.img").read_bytes()
        (tmp_path / "p.img").write_bytes(raw[: len(raw) // 2])
        seen: list[tuple[int, int]] = []

        def reader(offset: int, buf: memoryview) -> list[tuple[int, int]]:
            seen.append((offset, len(buf)))
            fs.readinto_at(offset, buf)
            return []

        result = capture(fs, str(tmp_path / "p.img"), CaptureOptions(chunk_size=64 * 1024, allocation=amap,
                                                                    resume=True, chunk_reader=reader))
    assert result.resumed_at > 0
    assert min(o for o, _ in seen) >= result.resumed_at
    assert sum(n for _, n in seen) == sum(n for o, n in amap.used_in(result.resumed_at, vol.stat().st_size))
    assert data_frames(tmp_path / "p.img") == data_frames(tmp_path / "ref.img")


def test_allocation_change_refuses_resume(tmp_path: Path, tree: Path) -> None:
    _need("fat")
    vol = tmp_path / "v.raw"
    fsbuild.make_fat(vol, 48, tree)
    cli("image", "--used-only", "--chunk-size", "64K", vol, tmp_path / "a.img")
    raw = (tmp_path / "a.img").read_bytes()
    (tmp_path / "a.img").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "new.bin").write_bytes(b"new data" * 100_000)
    subprocess.run(["mcopy", "-i", str(vol), str(tmp_path / "new.bin"), "::/new.bin"], check=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    proc = cli("image", "--used-only", "--chunk-size", "64K", "--resume", vol, tmp_path / "a.img", check=10)
    assert "allocation changed" in proc.stderr


def test_unknown_filesystem_exit_4_and_auto_fallback(tmp_path: Path) -> None:
    vol = tmp_path / "random.raw"
    vol.write_bytes(random.Random(3).randbytes(4 * MiB))
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "without --used-only" in lines[0]
    proc = cli("image", "--used-only=auto", "--json", vol, tmp_path / "x.img")
    assert "imaging in full" in proc.stderr
    assert json.loads(proc.stdout)["used_bytes"] is None


def test_window_of_a_partitioned_disk(tmp_path: Path, tree: Path) -> None:
    _need("fat")
    need_tools("sgdisk")
    part = tmp_path / "p.raw"
    expected = fsbuild.make_fat(part, 40, tree)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(44 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+40M", str(disk)], check=True, capture_output=True)
    with open(disk, "r+b") as fh:
        fh.seek(MiB)
        fh.write(part.read_bytes())
    cli("image", "--used-only", "--offset", "1M", "--length", "40M", disk, tmp_path / "w.img")
    with open_image(str(tmp_path / "w.img")) as im:
        assert im.size == 40 * MiB
        kinds = {e.kind for e in im.chunk_map()}
        assert ExtentKind.UNALLOCATED in kinds
    cli("restore", tmp_path / "w.img", tmp_path / "back.raw")
    assert fsbuild.fsck(tmp_path / "back.raw", "fat").returncode == 0
    assert fsbuild.read_files(tmp_path / "back.raw", "fat") == expected
