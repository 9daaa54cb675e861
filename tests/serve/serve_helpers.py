"""Helpers for the server tests: a real GPT disk (NTFS + ext4 with files), a holey/corrupt test source,
and in-process servers on port 0 that are always shut down.  Test modules import the fixtures they use.
(Not a conftest.py: a second ``conftest`` module would shadow ``tests/conftest.py`` for
``from conftest import need_tools``.)"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import need_tools
from imaging_utility.errors import ChunkCorruptError
from imaging_utility.extents import Extent, ExtentKind
from imaging_utility.serve._listener import Listener
from imaging_utility.serve.imdproxy import ImdproxyServer
from imaging_utility.serve.nbd import NbdServer

MiB = 1024 * 1024


class HoleySource:
    """Test source over bytes: ``kinds`` reports chosen ranges as ZERO/UNALLOCATED; reading a ``corrupt``
    range raises ``ChunkCorruptError`` (as the image reader does for a bad chunk)."""

    def __init__(self, data: bytes, kinds: list[tuple[int, int, ExtentKind]] | None = None,
                 corrupt: list[tuple[int, int]] | None = None) -> None:
        self.data = data
        self.kinds = sorted(kinds or [])
        self.corrupt = corrupt or []

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sector_size(self) -> int:
        return 512

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        if offset < 0 or offset + len(buf) > self.size:
            raise ValueError("out of range")
        for start, length in self.corrupt:
            if offset < start + length and start < offset + len(buf):
                raise ChunkCorruptError(f"chunk at {start} fails its checksum", chunk=start // MiB, offset=start)
        buf[:] = self.data[offset:offset + len(buf)]

    def extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos, end = offset, offset + length
        for start, n, kind in self.kinds:
            s, e = max(start, pos), min(start + n, end)
            if s >= e:
                continue
            if s > pos:
                out.append(Extent(pos, s - pos, ExtentKind.DATA))
            out.append(Extent(s, e - s, kind))
            pos = e
        if pos < end:
            out.append(Extent(pos, end - pos, ExtentKind.DATA))
        return out


@pytest.fixture
def holey() -> HoleySource:
    """8 MiB: data, then 2 MiB stored zeros (ZERO), then 2 MiB never read (UNALLOCATED), data; 64 KiB
    corrupt at 7 MiB.  The ZERO/UNALLOCATED ranges hold zero bytes, as the reader returns them."""
    data = bytearray(os.urandom(8 * MiB))
    data[2 * MiB:6 * MiB] = bytes(4 * MiB)
    kinds = [(2 * MiB, 2 * MiB, ExtentKind.ZERO), (4 * MiB, 2 * MiB, ExtentKind.UNALLOCATED)]
    return HoleySource(bytes(data), kinds, corrupt=[(7 * MiB, 64 * 1024)])


def _start(server: Listener) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _running(factory: Callable[..., Listener]) -> Iterator[Callable[..., Listener]]:
    """Start servers made by ``factory`` (on port 0 unless told) and shut every one down afterwards."""
    started: list[tuple[Listener, threading.Thread]] = []

    def start(*args: object, **kw: object) -> Listener:
        kw.setdefault("port", 0)
        server = factory(*args, **kw)
        started.append((server, _start(server)))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive(), "serve_forever did not return after shutdown()"


@pytest.fixture
def serve_nbd() -> Iterator[Callable[..., NbdServer]]:
    """Factory: ``serve_nbd(exports, **kw)`` → a running NbdServer on 127.0.0.1:0 (shut down after)."""
    with _running(NbdServer) as start:
        yield start  # type: ignore[misc]


@pytest.fixture
def serve_imdproxy() -> Iterator[Callable[..., ImdproxyServer]]:
    """Factory: ``serve_imdproxy(source, **kw)`` → a running ImdproxyServer (shut down after)."""
    with _running(ImdproxyServer) as start:
        yield start  # type: ignore[misc]


def run_clients(worker: Callable[[int], None], count: int = 32, timeout: float = 60) -> None:
    """Run ``worker(i)`` for ``i`` in ``range(count)`` on concurrent threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            worker(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors[0]


@dataclass
class Disk:
    path: Path
    partitions: dict[int, tuple[int, int]]  # number -> (offset, length) in bytes
    files: dict[str, bytes]  # name -> content, present on both filesystems


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


@pytest.fixture
def gpt_disk() -> Disk:
    """A 48 MiB GPT disk: p1 16 MiB NTFS, p2 ~29 MiB ext4, both holding the same few files."""
    need_tools("sgdisk", "mkntfs", "ntfscp", "mkfs.ext4")
    return _build_gpt_disk()


@functools.cache
def _build_gpt_disk() -> Disk:
    """Built once per test process (shared by every module that uses ``gpt_disk``)."""
    tmp = Path(tempfile.mkdtemp(prefix="iu-serve-disk-"))
    atexit.register(shutil.rmtree, tmp, True)
    files = {"hello.txt": b"hello from the image\n", "random.bin": os.urandom(300_000),
             "zeros.bin": bytes(100_000)}
    tree = tmp / "tree"
    tree.mkdir()
    for name, content in files.items():
        (tree / name).write_bytes(content)
    disk = tmp / "disk.raw"
    _run("truncate", "-s", "48M", disk)
    _run("sgdisk", "-n", "1:2048:+16M", "-t", "1:0700", "-c", "1:win", "-n", "2:0:0", "-t", "2:8300",
         "-c", "2:linux", disk)
    parts: dict[int, tuple[int, int]] = {}
    for n in (1, 2):
        info = subprocess.run(["sgdisk", "-i", str(n), str(disk)], capture_output=True, text=True,
                              check=True).stdout
        first = int(info.split("First sector: ")[1].split()[0])
        last = int(info.split("Last sector: ")[1].split()[0])
        parts[n] = (first * 512, (last - first + 1) * 512)
    ntfs, ext = tmp / "p1.raw", tmp / "p2.raw"
    _run("truncate", "-s", str(parts[1][1]), ntfs)
    _run("mkntfs", "-F", "-f", "-q", "-L", "win", ntfs)
    for name in files:
        _run("ntfscp", "-f", ntfs, tree / name, name)
    _run("truncate", "-s", str(parts[2][1]), ext)
    _run("mkfs.ext4", "-q", "-F", "-L", "linux", "-d", tree, ext)
    for n, image in ((1, ntfs), (2, ext)):
        _run("dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={parts[n][0]}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none")
    return Disk(disk, parts, files)


def part_bytes(disk: Disk, n: int) -> bytes:
    offset, length = disk.partitions[n]
    with open(disk.path, "rb") as f:
        f.seek(offset)
        return f.read(length)
