"""A restore to a device leaves what it wrote on the disk and out of the page cache (mincore(2) on the real
loop device, held open so that closing it cannot drop the cache instead), and the device reads back right.
The write-behind (``restore_writer.WriteBehind``) starts the writeback every 64 MiB on the way."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from devhelpers import random_file

from conftest import cli
from imagetools import resident
from imaging_utility.ops import restore_writer

LoopDev = Callable[..., str]
MiB = 1 << 20


def test_restored_device_leaves_the_page_cache(loopdev: LoopDev, tmp_path: Path) -> None:
    size = 96 * MiB
    data = random_file(tmp_path / "src.raw", size, seed=5)
    cli("image", tmp_path / "src.raw", tmp_path / "src.img.zst")
    (tmp_path / "target.raw").write_bytes(bytes(size))
    dev = loopdev(tmp_path / "target.raw")
    fd = os.open(dev, os.O_RDONLY)  # an opener of our own: the device's page cache outlives the restore
    try:
        cli("restore", "--yes", tmp_path / "src.img.zst", dev)
        assert resident(dev, 0, size) == 0
        with open(dev, "rb") as f:
            assert f.read(size) == data
    finally:
        os.close(fd)


def test_write_behind_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Used-only restores write with gaps: each span runs from the first write since the last step to the
    last one's end, and the span before is dropped once the next one's writeback starts."""
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(restore_writer, "WRITE_BEHIND", 4 * MiB)
    monkeypatch.setattr(restore_writer, "start_writeback", lambda fd, o, n: calls.append(("writeback", o, n)))
    monkeypatch.setattr(restore_writer, "drop_cached", lambda fd, o=0, n=0: calls.append(("drop", o, n)))
    wb = restore_writer.WriteBehind(-1)
    for i in range(12):  # 1 MiB written, 1 MiB of free space skipped
        wb.wrote(2 * i * MiB, MiB)
    assert calls == [("writeback", 0, 7 * MiB),
                     ("drop", 0, 7 * MiB), ("writeback", 8 * MiB, 7 * MiB),
                     ("drop", 8 * MiB, 7 * MiB), ("writeback", 16 * MiB, 7 * MiB)]
