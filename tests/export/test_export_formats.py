# ruff: noqa: F811  (pytest fixtures are imported from exportfixtures and requested by name)
"""Every format, from a full and a used-only image of a disk with an MBR and one with a GPT: qemu-img check
(where it checks) and compare, libvhdi/libvmdk and dissect.hypervisor all read the image's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from exportfixtures import Disks, export_disks  # noqa: F401  (fixtures)
from exporthelpers import ALL_FORMATS, check_all_readers, qemu_compare

from imaging_utility.ops.export import export_image

VARIANTS = [*ALL_FORMATS, "qcow2-zstd"]


@pytest.mark.parametrize("mode", ["full", "used"])
@pytest.mark.parametrize("scheme", ["dos", "gpt"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_is_read_identically(export_disks: Disks, tmp_path: Path,
                                    variant: str, scheme: str, mode: str) -> None:
    image, raw = export_disks[scheme, mode]
    fmt = "qcow2" if variant == "qcow2-zstd" else variant
    out = tmp_path / f"disk.{fmt}"
    result = export_image(str(image), str(out), fmt, compress=variant == "qcow2-zstd")
    assert result.virtual_size == os.path.getsize(raw)
    assert out.exists() and not Path(f"{out}.partial").exists()
    check_all_readers(fmt, out, raw)
    if mode == "used":
        assert result.read_bytes < os.path.getsize(raw)  # unallocated ranges are not read


def test_used_only_exports_are_smaller(export_disks: Disks, tmp_path: Path) -> None:
    """The free space of the disks is random bytes: a full export keeps it, a used-only one does not."""
    for fmt in ("vhdx", "vhd", "qcow2", "vmdk", "raw"):
        sizes = {}
        for mode in ("full", "used"):
            out = tmp_path / f"{mode}.{fmt}"
            export_image(str(export_disks["gpt", mode][0]), str(out), fmt)
            sizes[mode] = out.stat().st_blocks * 512
        assert sizes["used"] < sizes["full"] * 0.8, (fmt, sizes)


def test_partition_and_window(export_disks: Disks, tmp_path: Path) -> None:
    image, raw = export_disks["gpt", "full"]
    data = raw.read_bytes()
    part = tmp_path / "p2.raw"
    part.write_bytes(data[16 << 20 : 28 << 20])
    result = export_image(str(image), str(tmp_path / "p2.vhdx"), "vhdx", partition=2)
    assert result.identity["window"]["partition"] == 2 and result.virtual_size == 12 << 20
    qemu_compare("vhdx", part, tmp_path / "p2.vhdx")
    window = tmp_path / "w.raw"
    window.write_bytes(data[3 << 20 : (3 << 20) + 777 * 512])
    export_image(str(image), str(tmp_path / "w.qcow2"), "qcow2", offset=3 << 20, length=777 * 512)
    qemu_compare("qcow2", window, tmp_path / "w.qcow2")
