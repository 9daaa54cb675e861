"""``backup-disk DISK DIR`` where DIR cannot be a set directory: one line, exit 9, nothing changed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import need_root
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


def test_no_space_for_the_manifest(tmp_path: Path) -> None:
    """DIR on a filesystem with no room even for the manifest: exit 7 in one line (it was an internal
    error), and no temporary manifest left behind."""
    need_root()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(MIB))
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "fill").write_bytes(bytes(6 * 1024))
        code, _, err = run_cli("backup-disk", disk, mnt / "set")
        assert code == 7, err
        assert "no space left to write" in err and "internal error" not in err
        assert not [p for p in (mnt / "set").iterdir() if p.name != "backup.manifest.json"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
