"""``image --adaptive-rate-limit`` and the restore question as a user sees them in a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import cli
from imagetools import mixed_bytes

MiB = 1 << 20


def test_adaptive_rate_limit_summary(tmp_path: Path) -> None:
    (tmp_path / "src.raw").write_bytes(mixed_bytes(4 * MiB, seed=7))
    data = json.loads(cli("image", "--adaptive-rate-limit", "--max-throughput", "64M", "--json",
                          tmp_path / "src.raw", tmp_path / "a.img").stdout)
    pacing = data["rate_limit"]
    assert pacing["mode"] == "adaptive" and pacing["ceiling"] == 64 * MiB
    assert {"limited_seconds", "lowest", "reductions", "last_reason"} <= set(pacing)
    text = cli("image", "--adaptive-rate-limit", tmp_path / "src.raw", tmp_path / "b.img").stdout
    assert "pacing     adaptive:" in text
    fixed = cli("image", "--max-throughput", "64M", tmp_path / "src.raw", tmp_path / "c.img").stdout
    assert "pacing     held to 64.00 MiB/s (--max-throughput)" in fixed


def test_restore_question_describes_the_device(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    (tmp_path / "src.raw").write_bytes(mixed_bytes(2 * MiB, seed=8))
    cli("image", tmp_path / "src.raw", tmp_path / "src.img")
    (tmp_path / "t.raw").write_bytes(b"\x77" * (4 * MiB))
    dev = loopdev(tmp_path / "t.raw")
    before = hashlib.sha256(Path(dev).read_bytes()).hexdigest()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-m", "imaging_utility", "restore", str(tmp_path / "src.img"),
                                  dev])
    out = b""
    deadline = time.monotonic() + 60
    while b"Type the device name" not in out:
        assert time.monotonic() < deadline, out
        if select.select([fd], [], [], 0.5)[0]:
            out += os.read(fd, 4096)
    assert f"target {dev} (4.00 MiB, 512-byte sectors) holds now:".encode() in out, out
    assert b"no partition table and no known filesystem" in out
    os.write(fd, b"no\n")
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, out
    assert b"not confirmed" in out
    assert hashlib.sha256(Path(dev).read_bytes()).hexdigest() == before
