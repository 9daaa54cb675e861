"""Dynamic exports of a 4 GiB used-only NTFS image stay under 1.1× its used data.

Measured on the host's disk (allocated bytes) for every dynamic format, and as the apparent file size for
the formats that allocate by cluster or grain (qcow2, VMDK) and for VHDX with 1 MiB blocks.  VHD (2 MiB
blocks) and VHDX (32 MiB blocks) count whole blocks in their apparent size; inside a block, zero runs are
holes, which is why their allocation stays small (docs/export.md).
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from exporthelpers import MiB, need_export_tools

from conftest import need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import allocation_map
from imaging_utility.image.reader import open_image
from imaging_utility.ops.capture import CaptureOptions, capture
from imaging_utility.ops.export import export_image


@pytest.fixture(scope="module")
def ntfs_used_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    need_export_tools()
    need_tools("mkntfs", "ntfscp")
    work = tmp_path_factory.mktemp("ntfs4g")
    vol = work / "ntfs.raw"
    with open(vol, "wb") as f:
        f.truncate(4 << 30)
    subprocess.run(["mkntfs", "-F", "-Q", "-q", "-L", "used", str(vol)], check=True, capture_output=True)
    rng = random.Random(6)
    for i, size in enumerate((100 * MiB, 9 * MiB + 1234, 300_000, 25 * MiB)):
        data = work / f"f{i}"
        data.write_bytes(rng.randbytes(size))
        subprocess.run(["ntfscp", "-f", str(vol), str(data), f"file{i}.bin"], check=True, capture_output=True)
        data.unlink()
    image = work / "ntfs-used.img"
    with FileSource(str(vol)) as source:
        info, amap = allocation_map(source)
        capture(source, str(image), CaptureOptions(allocation=amap, filesystem={"type": info.type},
                                                   identity={"kind": "file", "size": source.size}))
    vol.unlink()
    with open_image(str(image)) as reader:
        assert reader.allocation is not None
        used = reader.allocation.used_bytes
    assert 130 * MiB < used < 400 * MiB
    return image, used


@pytest.mark.parametrize(("fmt", "opts", "apparent_too"), [
    ("vhdx", {}, False), ("vhdx", {"block_size": MiB}, True), ("vhd", {}, False), ("qcow2", {}, True),
    ("qcow2", {"compress": True}, True), ("vmdk", {}, True),
])  # vmdk-stream compresses the same grains as vmdk (zlib on 135 MiB of random data costs ~10 s here)
def test_dynamic_exports_stay_small(ntfs_used_only: tuple[Path, int], tmp_path: Path, fmt: str,
                                    opts: dict[str, object], apparent_too: bool) -> None:
    image, used = ntfs_used_only
    out = tmp_path / f"out.{fmt}"
    result = export_image(str(image), str(out), fmt, **opts)  # type: ignore[arg-type]
    assert result.virtual_size == 4 << 30
    assert result.allocated_bytes <= 1.1 * used, (result.allocated_bytes, used)
    if apparent_too:
        assert result.file_size <= 1.1 * used, (result.file_size, used)
    assert result.read_bytes <= used + 2 * MiB  # unallocated ranges are not read
