"""Fixtures shared by the export tests (built once per session); import them with ``# noqa: F401``."""

from __future__ import annotations

from pathlib import Path

import pytest
from exporthelpers import MiB, build_disk, image_raw, make_image, need_export_tools

from imagetools import mixed_bytes, sparse_file
from imaging_utility.devices.source import FileSource
from imaging_utility.ops.capture import CaptureOptions, capture

Disks = dict[tuple[str, str], tuple[Path, Path]]
BIG = 129 << 30  # over qcow2's limit with 512-byte clusters (128 GiB); VHDX chunks of 4 GiB cross it often
BIG_ISLANDS = {0: b"\x55" * 4096, (4 << 30) + MiB + 7 * 512: b"island past the first VHDX chunk" * 50,
               (64 << 30) + 3: b"unaligned island at 64 GiB" * 10, BIG - 4096: b"\xaa" * 4096}
BIG_CHUNK = 16 * MiB


@pytest.fixture(scope="session")
def export_disks(tmp_path_factory: pytest.TempPathFactory) -> Disks:
    """{(scheme, mode): (image, raw bytes it stands for)} for scheme dos/gpt and mode full/used."""
    need_export_tools()
    work = tmp_path_factory.mktemp("export-disks")
    out: Disks = {}
    for scheme in ("dos", "gpt"):
        disk = build_disk(work / f"{scheme}.raw", scheme, work)
        out[scheme, "full"] = (make_image(disk, work / f"{scheme}-full.img"), disk)
        used = make_image(disk, work / f"{scheme}-used.img", used_only=True)
        out[scheme, "used"] = (used, image_raw(used, work / f"{scheme}-used.raw"))
    return out


@pytest.fixture(scope="session")
def mixed_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 24 MiB + 1536 B source of zero, text and random regions, and its image."""
    need_export_tools()
    work = tmp_path_factory.mktemp("export-mixed")
    raw = work / "mixed.raw"
    raw.write_bytes(mixed_bytes(24 * MiB + 1536, seed=21))
    return make_image(raw, work / "mixed.img"), raw


@pytest.fixture(scope="session")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image of a 129 GiB sparse disk with a few islands of data (16 MiB chunks, no digest)."""
    need_export_tools()
    work = tmp_path_factory.mktemp("export-big")
    raw = sparse_file(work / "big.raw", BIG, BIG_ISLANDS)
    dest = work / "big.img"
    with FileSource(str(raw)) as source:
        capture(source, str(dest), CaptureOptions(chunk_size=BIG_CHUNK, digests=(),
                                                  identity={"kind": "file", "size": BIG}))
    raw.unlink()
    return dest
