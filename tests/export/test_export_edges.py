# ruff: noqa: F811  (pytest fixtures are imported from exportfixtures and requested by name)
"""Edge sizes (one sector, an odd byte count, empty), 4096-byte sectors, a 129 GiB disk with a few
islands of data, BAT interleaving past the first VHDX chunk, and the formats' size limits."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from exportfixtures import BIG, BIG_CHUNK, BIG_ISLANDS, big_image  # noqa: F401  (fixtures)
from exporthelpers import (
    ALL_FORMATS,
    IslandSource,
    MiB,
    check_all_readers,
    make_image,
    need_export_tools,
    qemu_check,
    qemu_compare,
    read_dissect_ranges,
    read_libyal_ranges,
    write_with,
)

from conftest import cli, need_root, need_tools
from imagetools import mixed_bytes
from imaging_utility.errors import UsageError
from imaging_utility.export import ExportOptions, make_writer
from imaging_utility.image.reader import open_image
from imaging_utility.ops.export import export_image

VARIANTS = [*ALL_FORMATS, "qcow2-zstd"]
GiB = 1 << 30
TiB = 1 << 40


@pytest.mark.parametrize("size", [512, MiB + 100])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_sector_and_odd_sizes(tmp_path: Path, variant: str, size: int) -> None:
    need_export_tools()
    data = b"\x01" + mixed_bytes(size, seed=5, region=4096)[1:]
    raw = tmp_path / "src.raw"
    raw.write_bytes(data)
    fmt = "qcow2" if variant == "qcow2-zstd" else variant
    out = tmp_path / f"out.{fmt}"
    result = export_image(str(make_image(raw, tmp_path / "src.img")), str(out), fmt,
                          compress=variant == "qcow2-zstd")
    padded = size if fmt == "raw" else -(-size // 512) * 512
    assert result.virtual_size == padded
    assert bool(result.notes) == (padded != size)  # a rounded size is said, in one line
    if padded != size:
        raw.write_bytes(data + bytes(padded - size))
    check_all_readers(fmt, out, raw)


def test_empty_source(tmp_path: Path) -> None:
    need_export_tools()
    raw = tmp_path / "source.raw"
    raw.write_bytes(b"")
    image = make_image(raw, tmp_path / "source.img")
    for fmt in ALL_FORMATS:
        out = tmp_path / f"empty.{fmt}"
        if fmt in ("qcow2", "raw"):
            assert export_image(str(image), str(out), fmt).virtual_size == 0
            if fmt == "qcow2":
                qemu_check(fmt, out)
            qemu_compare(fmt, raw, out)
            continue
        with pytest.raises(UsageError, match="empty"):
            export_image(str(image), str(out), fmt)
        assert not out.exists() and not Path(f"{out}.partial").exists()
    proc = cli("export", image, tmp_path / "e.vhdx", check=2)
    assert proc.stderr.count("\n") == 1 and "0 bytes" in proc.stderr


def test_4096_byte_sectors(tmp_path: Path, loopdev) -> None:  # type: ignore[no-untyped-def]
    """A 4Kn disk (a loop device with 4096-byte sectors and a GPT written through it): the VHDX gets
    4096-byte logical sectors by default; every reader sees the disk's bytes."""
    need_export_tools()
    need_root()
    need_tools("losetup", "sfdisk")
    backing = tmp_path / "4k.raw"
    backing.write_bytes(mixed_bytes(16 * MiB, seed=44))
    dev = loopdev(backing, sector_size=4096)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", dev], check=True, capture_output=True,
                   input=b"label: gpt\nstart=256, size=2048, type=linux\n")
    subprocess.run(["blockdev", "--flushbufs", dev], check=True)
    image = tmp_path / "4k.img"
    cli("image", dev, image)
    with open_image(str(image)) as reader:
        assert reader.sector_size == 4096
    for fmt in ("vhdx", "vhd", "qcow2", "vmdk"):
        out = tmp_path / f"4k.{fmt}"
        result = export_image(str(image), str(out), fmt)
        if fmt == "vhdx":
            assert result.details["logical_sector_size"] == 4096
            # QEMU 7.2 refuses 4096-byte-sector VHDX files; libvhdi and dissect read them
            ranges = [(0, 16 * MiB)]
            want = [backing.read_bytes()]
            assert read_libyal_ranges(fmt, out, ranges) == want
            assert read_dissect_ranges(fmt, out, ranges) == want
            info = subprocess.run(["vhdiinfo", str(out)], capture_output=True, text=True, check=True).stdout
            assert "Bytes per sector\t: 4096" in info
        else:
            check_all_readers(fmt, out, backing)
    out = tmp_path / "512.vhdx"
    assert export_image(str(image), str(out), "vhdx", logical_sector=512).details["logical_sector_size"] == 512
    qemu_compare("vhdx", backing, out)


def _islands(path: Path, fmt: str, islands: dict[int, bytes]) -> None:
    """Each island and the bytes just around it read back right, through libyal (VHD/VHDX/VMDK) and dissect."""
    ranges, want = [], []
    for off, data in islands.items():
        start = max(0, off - 4096)
        ranges.append((start, off - start + len(data) + 4096))
        want.append(bytes(off - start) + data + bytes(4096))
    ranges[-1] = (ranges[-1][0], ranges[-1][1] - 4096)  # the last island ends the disk
    want[-1] = want[-1][:-4096]
    if fmt.startswith(("vhd", "vmdk")):
        assert read_libyal_ranges(fmt, path, ranges) == want
    assert read_dissect_ranges(fmt, path, ranges) == want


@pytest.mark.parametrize(("fmt", "block"), [("vhdx", None), ("vhdx", MiB), ("qcow2", None), ("vmdk", None),
                                            ("vhd", None)])
def test_big_sparse_disk(big_image: Path, tmp_path: Path, fmt: str, block: int | None) -> None:
    """129 GiB with four islands: only their blocks are read and allocated; QEMU checks the file."""
    out = tmp_path / f"big.{fmt}"
    result = export_image(str(big_image), str(out), fmt, block_size=block)
    assert result.virtual_size == BIG
    assert result.read_bytes == len({off // BIG_CHUNK for off in BIG_ISLANDS}) * BIG_CHUNK  # their chunks only
    assert out.stat().st_blocks * 512 < 64 * MiB
    if fmt != "vhd":
        qemu_check(fmt, out)
    _islands(out, fmt, BIG_ISLANDS)


def test_vhdx_sector_bitmap_slots(tmp_path: Path) -> None:
    """5 GiB with 1 MiB blocks: 4096 payload blocks per chunk, so block 4608 (at 4.5 GiB) sits at BAT
    index 4609 and index 4096 is a sector-bitmap slot (FreeBSD mkimg once got this wrong)."""
    need_export_tools()
    islands = {4 * GiB - MiB: b"last block of chunk 0" * 100, 4 * GiB + GiB // 2: b"block 4608" * 100,
               5 * GiB - 512: b"\x07" * 512}
    out = tmp_path / "slots.vhdx"
    write_with("vhdx", IslandSource(5 * GiB, islands), out, block_size=MiB)
    with open(out, "rb") as f:
        f.seek(3 * MiB)
        bat = f.read(8 * 5200)
    entry = [int.from_bytes(bat[i * 8 : i * 8 + 8], "little") for i in range(5200)]
    assert entry[4096] == 0 and entry[4095] & 7 == 6 and entry[4609] & 7 == 6 and entry[4608] == 0
    assert entry[5120] & 7 == 6  # the last block, 5119, after one slot
    qemu_check("vhdx", out)
    _islands(out, "vhdx", islands)  # (qemu-img compare against a 5 GiB sparse raw file takes ~30 s)


def test_size_limits() -> None:
    """Over a format's limit: a one-line UsageError before anything is written."""
    cases = [
        ("vhd", 2040 * GiB + 512, {}, "2040 GiB"), ("vhd-fixed", 2041 * GiB, {}, "2040 GiB"),
        ("vmdk", 2 * TiB, {}, "2 TiB"), ("vmdk-stream", 3 * TiB, {}, "2 TiB"),
        ("vhdx", 64 * TiB + 512, {}, "64 TiB"), ("vhd-fixed", 32 * TiB + 1, {"azure": True}, "32 TiB"),
        ("qcow2", 128 * GiB + 512, {"block_size": 512}, "128 GiB"),
    ]
    for fmt, size, opts, limit in cases:
        with pytest.raises(UsageError, match=limit) as err:
            make_writer(size, 512, ExportOptions(fmt, **opts))  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    for fmt, size, opts in (("vhd", 2040 * GiB, {}), ("vmdk", 2 * TiB - 512, {}), ("vhdx", 64 * TiB, {}),
                            ("vhd-fixed", 32 * TiB, {"azure": True}), ("qcow2", 128 * GiB, {"block_size": 512})):
        assert make_writer(size, 512, ExportOptions(fmt, **opts)).virtual_size == size  # type: ignore[arg-type]


def test_vhd_and_vmdk_refuse_a_2049_gib_disk(tmp_path: Path) -> None:
    for fmt in ("vhd", "vmdk"):
        with pytest.raises(UsageError):
            write_with(fmt, IslandSource(2049 * GiB, {0: b"x"}), tmp_path / f"x.{fmt}")
    assert not os.path.exists(tmp_path / "x.vhd.partial")


@pytest.mark.parametrize(("fmt", "block", "compress"), [
    ("vmdk", 8192, False), ("vmdk-stream", 8192, False), ("qcow2", 512, False), ("qcow2", 2 * MiB, False),
    ("qcow2", 512, True), ("qcow2", 2 * MiB, True), ("vhd", 512 * 1024, False), ("vhdx", 256 * MiB, False),
    ("vhdx-fixed", MiB, False),
])
def test_block_sizes_at_their_limits(tmp_path: Path, fmt: str, block: int, compress: bool) -> None:
    need_export_tools()
    raw = tmp_path / "src.raw"
    raw.write_bytes(mixed_bytes(5 * MiB + 3584, seed=77, region=16384))
    out = tmp_path / f"out.{fmt}"
    result = export_image(str(make_image(raw, tmp_path / "src.img", chunk_size=256 * 1024)), str(out), fmt,
                          block_size=block, compress=compress)
    assert result.details.get("block_size", result.details.get("cluster_size", result.details.get("grain_size"))) \
        == block
    check_all_readers(fmt, out, raw)
