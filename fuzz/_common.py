"""Shared pieces of the fuzz harnesses (see fuzz/README.md).

A harness's ``TestOneInput`` lets through only what the code under test does not promise: the
project's own ``errors.Error`` subclasses are the documented way to fail, anything else is a crash.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import zstandard

from imaging_utility.blocks import check_range
from imaging_utility.extents import Extent, ExtentKind

FUZZ = Path(__file__).resolve().parent
BASES = FUZZ / "bases"
ROOT = FUZZ.parent


@functools.cache
def base_image(name: str) -> bytes:
    """A small real volume or image kept compressed in ``fuzz/bases`` (built by ``make_seeds.py``)."""
    return zstandard.ZstdDecompressor().decompress((BASES / f"{name}.zst").read_bytes(), max_output_size=64 << 20)


class PatchedSource:
    """A ``BlockSource``: ``base`` bytes cut or zero-extended to ``size``, with ``patches`` laid over them."""

    def __init__(self, base: bytes, size: int, patches: list[tuple[int, bytes]], sector_size: int = 512) -> None:
        self._base = memoryview(base)
        self._size = size
        self._patches = [(o, p) for o, p in patches if o < size]
        self._sector_size = sector_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self._sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self._size, offset, len(buf))
        view = memoryview(buf).cast("B")
        end = offset + len(view)
        have = max(0, min(end, len(self._base)) - offset)
        view[:have] = self._base[offset : offset + have]
        view[have:] = bytes(len(view) - have)
        for o, p in self._patches:
            s, e = max(o, offset), min(o + len(p), end)
            if s < e:
                view[s - offset : e - offset] = p[s - o : e - o]

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        return [Extent(offset, length, ExtentKind.DATA)] if length else []


def patches(data: bytes, size: int) -> list[tuple[int, bytes]]:
    """Records ``u32 offset, u8 length - 1, bytes`` (offsets taken modulo ``size``) until the data ends."""
    out = []
    pos = 0
    while pos + 5 <= len(data) and size:
        off, n = struct.unpack_from("<IB", data, pos)
        pos += 5
        out.append((off % size, data[pos : pos + n + 1]))
        pos += n + 1
    return out


class ErrorLog(logging.Handler):
    """Collects ERROR records (a server's "request failed" log is a crash the server swallowed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            record, self.records = self.records[0], []
            raise AssertionError(f"logged as an error: {record.getMessage()}\n{record.exc_text or ''}")


def scratch_dir() -> str:
    """A private directory on tmpfs when there is one (image harnesses write their input there),
    removed when the process exits."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="iu-fuzz-", dir=root)
    atexit.register(shutil.rmtree, path, True)
    return path
