"""``backup-disk DISK DIR`` where DIR cannot be a set directory: one line, exit 9, nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagetools import run_cli

MIB = 1 << 20


@pytest.mark.parametrize("kind", ["file", "fifo", "under a file"])
def test_set_dir_that_is_not_a_directory(kind: str, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(MIB))
    there = tmp_path / "set"
    if kind == "fifo":
        os.mkfifo(there)
    else:
        there.write_bytes(b"not a set")
    set_dir = there / "sub" if kind == "under a file" else there
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli("backup-disk", disk, set_dir)
    assert code == 9, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert "not a directory" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind != "fifo":
        assert there.read_bytes() == b"not a set"
