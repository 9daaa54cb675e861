"""Helpers for the files-inside-images tests: volumes with hard links, a WebDAV server process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsbuild
from conftest import need_root, need_tools

MiB = 1 << 20


def need(family: str) -> None:
    need_tools(*fsbuild.TOOLS[family])
    if fsbuild.NEEDS_ROOT[family]:
        need_root()


def build(kind: str, vol: Path, files: Path) -> dict[str, str]:
    """A real volume of ``kind`` (ntfs, ext4, fat32, exfat) with the standard tree plus a hard link
    (not on FAT/exFAT); returns ``{relpath: sha256}``."""
    if kind == "ext4":
        expected = fsbuild.make_ext(vol, 32, files)
        fsbuild._run("debugfs", "-w", "-f", "-", vol,
                     stdin=b"ln /hello.txt /hardlink.txt\nsif /hello.txt links_count 2\n")
        expected["hardlink.txt"] = expected["hello.txt"]
    elif kind == "ntfs":
        expected = fsbuild.make_ntfs(vol, 32, files)
        with fsbuild.mounted(vol, "ntfs") as mnt:
            os.link(mnt / "large.bin", mnt / "level0" / "large-link.bin")
        expected["level0/large-link.bin"] = expected["large.bin"]
    elif kind == "fat32":
        expected = fsbuild.make_fat(vol, 40, files, fat_bits=32, mkfs_opts=("-s", "1"))
    elif kind == "exfat":
        expected = fsbuild.make_exfat(vol, 40, files)
    else:
        raise ValueError(kind)
    return expected


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inside(root: Path) -> list[Path]:
    """Every path under ``root`` (symlinks not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [Path(dirpath, n) for n in dirnames + filenames]
    return out


@contextlib.contextmanager
def webdav(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``imaging-utility webdav ARGS --port 0`` as a real process; yield its URL; always stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "webdav", *map(str, args), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://[^ ;]+/)", line)
        if not m:
            proc.kill()
            raise AssertionError(f"webdav did not start: {line!r} {proc.communicate()[1]}")
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    need_tools("curl")
    return subprocess.run(["curl", "-s", "-g", "--max-time", "30", *args], capture_output=True, timeout=60)


def status(*args: str) -> int:
    return int(curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout)


