"""A source file truncated while it is imaged: the capture stops with one line saying the source shrank
(exit 6), never an "unreadable sector" (which --rescue would zero-fill and go past)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MIB = 1 << 20


@pytest.mark.parametrize("rescue", [False, True])
def test_source_truncated_mid_capture(rescue: bool, tmp_path: Path) -> None:
    src, dest = tmp_path / "grow.raw", tmp_path / "img"
    src.write_bytes(os.urandom(32 * MIB))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaging_utility", "image", *(["--rescue"] if rescue else []), "--chunk-size", "256K",
         "--max-throughput", "4M", str(src), str(dest)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not (dest.exists() and dest.stat().st_size > 2 * MIB):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.truncate(src, 8 * MIB)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 6, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the source shrank while being read" in lines[0], err
    assert "(now 8388608 bytes)" in lines[0] and "input/output error" not in err
