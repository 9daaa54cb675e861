"""A restore whose target is the image being read, by any name (the same path, a hard link, a symlink, a
part of a split image, the file standard input is redirected from), is refused with exit 9 and the image
is left whole: ``--force`` used to empty the image before reading it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from imagetools import another_name

MIB = 1 << 20


@pytest.mark.parametrize("how", ["same path", "hard link", "symlink", "split part", "standard input"])
def test_restore_onto_its_own_image(how: str, tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(3 * MIB))
    split = how == "split part"
    img = tmp_path / "disk.img.zst"
    cli("image", *(["--split-size", "1M", "--chunk-size", "256K"] if split else []), src, img)
    parts = sorted(tmp_path.glob("disk.img.zst*"))
    before = {p: p.read_bytes() for p in parts}
    image_arg: Path | str = parts[0] if split else img
    target = parts[1] if split else another_name(img, how)
    if how == "standard input":
        with open(img, "rb") as stdin:
            proc = subprocess.run([sys.executable, "-m", "imaging_utility", "restore", "--force", "-", str(img)],
                                  stdin=stdin, capture_output=True, text=True, timeout=60)
    else:
        proc = cli("restore", "--force", image_arg, target, check=None)
    assert proc.returncode == 9, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "is the image being restored" in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in parts} == before
    cli("verify", image_arg)
