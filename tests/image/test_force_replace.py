"""``image --force`` over an old image: the old file's blocks are freed while the new image is being
written (not when the run ends), and nothing another name still reaches is touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from imagetools import run_cli

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
