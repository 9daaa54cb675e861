"""An IMAGE, volume or source argument that is a named pipe or a character device: every command stops at
once with one line (exit 4) instead of blocking in open() on a pipe nobody writes, or reading a device
that never ends."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import cli, need_root

COMMANDS = [
    ("info", "{x}"), ("verify", "{x}"), ("restore", "{x}", "{out}/r.raw"), ("export", "{x}", "{out}/e.vhdx"),
    ("ls", "{x}", "/"), ("extract", "{x}", "/", "{out}/x"), ("webdav", "{x}"), ("mount", "{x}", "{mnt}"),
    ("serve-proxy", "{x}"), ("image", "{x}", "{out}/i.img.zst"),
]


@pytest.mark.parametrize("kind", ["fifo", "char device"])
@pytest.mark.parametrize("argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_pipe_or_char_device_as_input(kind: str, argv: tuple[str, ...], tmp_path: Path) -> None:
    x = tmp_path / "input"
    if kind == "fifo":
        os.mkfifo(x)
    else:
        need_root()
        os.mknod(x, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # another /dev/zero: it never ends
    out, mnt = tmp_path / "out", tmp_path / "mnt"
    out.mkdir()
    mnt.mkdir()
    proc = cli(*(a.format(x=x, out=out, mnt=mnt) for a in argv), check=None, timeout=30)
    assert proc.returncode == 4, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and str(x) in lines[0], proc.stderr
    assert not any(out.iterdir())
