"""XFS files whose extent list is a B+tree (``tree_xfs._btree_records``): read as the kernel wrote them, and
a tree that repeats or mislabels a block is one clear error, never a walk without end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lfsbuild
import pytest
from lfscases import require

from conftest import cli

PIECES = 120


def _content() -> bytes:
    return b"".join(bytes([i]) * 4096 for i in range(PIECES))


@pytest.fixture(scope="module")
def btree_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A file written a block at a time, each block fsynced between two of another file: too many
    extents for the inode, so its data fork is a B+tree (checked with xfs_db)."""
    require("xfs")
    path = tmp_path_factory.mktemp("xfsbtree") / "xfs.img"
    path.write_bytes(bytes(64 << 20))
    lfsbuild.run("mkfs.xfs", "-q", "-f", "--unsupported", path)
    with lfsbuild.mounted(path) as mnt:
        with open(mnt / "frag", "wb") as f, open(mnt / "other", "wb") as g:
            for i in range(PIECES):
                for out, data in ((f, bytes([i]) * 4096), (g, b"o" * 4096)):
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
        ino = os.stat(mnt / "frag").st_ino
    assert "core.format = 3 (btree)" in xfs_db(path, ino, "p core.format")
    return path, ino


def xfs_db(path: Path, ino: int, *cmds: str, write: bool = False) -> str:
    args = [a for c in (f"inode {ino}", *cmds) for a in ("-c", c)]
    return lfsbuild.run("xfs_db", "-x" if write else "-r", *args, path)


def test_btree_file_reads_back(btree_volume: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = btree_volume
    cli("extract", path, "/frag", tmp_path / "out")
    assert (tmp_path / "out" / "frag").read_bytes() == _content()


def _damaged(btree_volume: tuple[Path, int], tmp: Path, *writes: str) -> Path:
    src, ino = btree_volume
    path = tmp / "damaged.img"
    shutil.copyfile(src, path)
    xfs_db(path, ino, *(f"write {w}" for w in writes), write=True)  # xfs_db keeps the inode's CRC right
    return path


def test_a_block_reached_twice(btree_volume: tuple[Path, int], tmp_path: Path) -> None:
    """The root names its leaf twice: a shared block would repeat its whole subtree."""
    src, ino = btree_volume
    leaf = xfs_db(src, ino, "p u3.bmbt.ptrs[1]").split("=")[1].strip()
    path = _damaged(btree_volume, tmp_path, "u3.bmbt.numrecs 2", "u3.bmbt.keys[2].startoff 1000",
                    f"u3.bmbt.ptrs[2] {leaf}")
    proc = cli("extract", path, "/", tmp_path / "out", check=3)
    assert f"/frag: xfs inode {ino}: its extent B+tree: block {leaf} is reached twice" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "other").read_bytes() == b"o" * 4096 * PIECES


@pytest.mark.parametrize("writes,why", [
    (("u3.bmbt.level 3",), "level 0 (expected 2)"),  # the root lies about the height below it
    (("u3.bmbt.level 0",), "root claims level 0"),
    (("u3.bmbt.numrecs 60",), "root claims level 1 with 60 records"),
    (("u3.bmbt.ptrs[1] 999999999",), "is outside the volume"),
])
def test_a_tree_that_lies(btree_volume: tuple[Path, int], tmp_path: Path, writes: tuple[str, ...], why: str) -> None:
    path = _damaged(btree_volume, tmp_path, *writes)
    proc = cli("ls", "-l", path, "/", check=0)
    assert "frag" in proc.stdout  # listing needs the inode, not its extents
    proc = cli("extract", path, "/frag", tmp_path / "out", check=3)
    assert why in proc.stderr and proc.stderr.count("Traceback") == 0, proc.stderr
