"""A target in /dev that does not exist (a disk not connected, a mistyped name) is never created as a
regular file in the memory-backed /dev and reported as done: every writing command stops with exit 4.
A filesystem mounted below /dev (/dev/shm) is an ordinary place to write."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import _missing, cli

MIB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(2 * MIB))
    img = tmp_path / "disk.img.zst"
    cli("image", src, img)
    return img


@pytest.mark.parametrize("command", ["restore", "restore-stream", "image", "export", "backup-disk", "extract"])
def test_absent_device_is_not_created_in_dev(command: str, image: Path, tmp_path: Path) -> None:
    absent = f"/dev/iu-absent-{uuid.uuid4().hex[:12]}"
    argv = {"restore": ["restore", image, absent], "restore-stream": ["restore", "-", absent],
            "image": ["image", tmp_path / "disk.raw", absent], "export": ["export", image, absent + ".vhdx"],
            "backup-disk": ["backup-disk", tmp_path / "disk.raw", absent], "extract": ["extract", image, "/", absent]}
    if command == "restore-stream":
        with open(image, "rb") as stdin:
            proc = subprocess.run([sys.executable, "-m", "imaging_utility", *map(str, argv[command])], stdin=stdin,
                                  capture_output=True, text=True, timeout=60)
    else:
        proc = cli(*argv[command], check=None)
    assert proc.returncode == 4, proc.stderr
    if command != "extract":  # the raw disk holds no filesystem: extract may stop at that first
        assert "is the device connected?" in proc.stderr
    assert not [p for p in os.listdir("/dev") if p.startswith(os.path.basename(absent))]


def test_a_filesystem_below_dev_is_fine(image: Path) -> None:
    if not os.path.ismount("/dev/shm"):
        _missing("a /dev/shm mount")  # a tmpfs below /dev, as on every Debian machine
    out = Path(f"/dev/shm/iu-{uuid.uuid4().hex[:12]}.raw")
    try:
        cli("restore", image, out)
        assert out.stat().st_size == 2 * MIB
    finally:
        out.unlink(missing_ok=True)
