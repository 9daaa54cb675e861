"""``image --force`` over an old image: the old file's blocks are freed while the new image is being
written (not when the run ends), and nothing another name still reaches is touched."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from imagetools import another_name, run_cli

MIB = 1 << 20


def _discarded_sizes(pid: int) -> list[int]:
    """Sizes of the files ``pid`` holds open that an ``--force`` run renamed away and unlinked."""
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if ".discard" in target:
                sizes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except OSError:
            continue
    return sizes


def test_old_image_is_freed_while_the_new_one_is_written(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "img"
    src.write_bytes(os.urandom(8 * MIB))
    dest.write_bytes(os.urandom(64 * MIB))  # the old image, much larger than the new one's first seconds
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaging_utility", "image", "--force", "--chunk-size", "64K",
         "--max-throughput", "1M", str(src), str(dest)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        seen: list[int] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            seen = _discarded_sizes(proc.pid)
            if seen and all(s == 0 for s in seen):
                break
            time.sleep(0.05)
        assert seen and all(s == 0 for s in seen), f"the old image still holds {seen} bytes mid-run"
    finally:
        proc.kill()
        proc.communicate()


def test_force_leaves_other_names_and_link_targets_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * MIB))
    old = os.urandom(2 * MIB)
    hard, dest = tmp_path / "kept-hard-link", tmp_path / "img"
    hard.write_bytes(old)
    os.link(hard, dest)  # the old image has a second name: replacing DEST must not empty it
    assert run_cli("image", "--force", src, dest)[0] == 0
    assert hard.read_bytes() == old
    assert run_cli("verify", dest)[0] == 0

    target, link = tmp_path / "link-target", tmp_path / "img-link"
    target.write_bytes(old)
    link.symlink_to(target)  # DEST a symlink: the link is replaced, never written through
    assert run_cli("image", "--force", src, link)[0] == 0
    assert target.read_bytes() == old and not link.is_symlink()
    assert run_cli("verify", link)[0] == 0


def _special(kind: str, path: Path, loopdev: Callable[..., str], tmp_path: Path) -> None:
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "char device":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # another /dev/null
    elif kind == "link to a block device":
        (tmp_path / "backing").write_bytes(bytes(1 << 20))
        path.symlink_to(loopdev(tmp_path / "backing"))
    elif kind == "link to a directory":
        (tmp_path / "adir").mkdir()
        path.symlink_to(tmp_path / "adir")


@pytest.mark.parametrize("kind", ["directory", "fifo", "char device", "link to a block device",
                                  "link to a directory"])
@pytest.mark.parametrize("mode", ["--force", "--resume", None])
def test_dest_that_is_not_a_file_is_refused(kind: str, mode: str | None, tmp_path: Path,
                                            loopdev: Callable[..., str]) -> None:
    """A device node, a pipe or a directory at DEST (or a link to one) is never renamed away, resumed into
    or written: ``image --force SRC /dev/sdb`` once moved the node out of /dev and filled RAM with a file."""
    need_root()
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(os.urandom(MIB))
    _special(kind, dest, loopdev, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli("image", *([mode] if mode else []), src, dest)
    assert code == 9, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "dest" in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not dest.is_file()


@pytest.mark.parametrize("how", ["same path", "hard link", "symlink"])
def test_source_as_dest_is_refused(how: str, tmp_path: Path) -> None:
    """``image --force X X`` once discarded the source under the running capture (an I/O error half-way,
    or an image of a file that no longer exists); it is refused before anything changes."""
    src = tmp_path / "disk.raw"
    data = os.urandom(4 * MIB)
    src.write_bytes(data)
    dest = another_name(src, how)
    for mode in ("--force", "--resume"):
        code, _, err = run_cli("image", mode, src, dest)
        assert code == 9 and "is the source being imaged" in err and len(err.strip().splitlines()) == 1, err
        assert src.read_bytes() == data


def test_file_behind_the_loop_device_being_imaged_is_refused(tmp_path: Path,
                                                             loopdev: Callable[..., str]) -> None:
    """``image --force /dev/loopN FILE`` where FILE is the loop device's backing file: refused (exit 9),
    FILE untouched; --force would have discarded the source's own bytes."""
    backing = tmp_path / "disk.raw"
    data = os.urandom(4 * MIB)
    backing.write_bytes(data)
    dev = loopdev(backing, read_only=True)
    code, _, err = run_cli("image", "--force", dev, backing)
    assert code == 9 and "is the source being imaged" in err, err
    assert backing.read_bytes() == data


def test_old_image_that_cannot_be_moved_is_kept_whole(tmp_path: Path) -> None:
    """``--force`` over a split image one part of which cannot be renamed (immutable): one line, exit 5,
    and every part of the old image back in its place (none left renamed away)."""
    need_root()
    need_tools("chattr")
    src, dest = tmp_path / "src", tmp_path / "img"
    src.write_bytes(os.urandom(3 * MIB))
    cli("image", "--split-size", "1M", "--chunk-size", "256K", src, dest)
    parts = sorted(tmp_path.glob("img.*"))
    assert len(parts) >= 3
    before = {p.name: p.read_bytes() for p in parts}
    subprocess.run(["chattr", "+i", str(parts[1])], check=True)
    try:
        code, _, err = run_cli("image", "--force", src, dest)
    finally:
        subprocess.run(["chattr", "-i", str(parts[1])], check=True)
    assert code == 5 and "cannot replace" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in sorted(tmp_path.glob("img.*"))} == before
    assert not list(tmp_path.glob(".*discard"))
