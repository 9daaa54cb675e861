"""Chunks decoded through an image reader's cache are bounded in bytes for the whole process
(``limits.DECODES``): many threads reading different chunks at once (an NBD or WebDAV server with many
clients) decode at most the budget at a time, and every read still gets its right bytes."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import cli
from imaging_utility import limits
from imaging_utility.image import reader as reader_mod
from imaging_utility.image.reader import ImageReader, open_image

MIB = 1 << 20


def test_byte_budget_holds_at_most_its_total() -> None:
    budget = limits.ByteBudget(10)
    active, peak, lock = [0], [0], threading.Lock()

    def take(want: int) -> None:
        n = min(want, budget.total)  # more than the total is held as all of it
        with budget.hold(want):
            with lock:
                active[0] += n
                peak[0] = max(peak[0], active[0])
            threading.Event().wait(0.01)
            with lock:
                active[0] -= n

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(take, [4, 3, 6, 10, 25, 1, 2, 9] * 4))  # 25 > total: waits until alone, holds 10
    assert 0 < peak[0] <= 10 and active[0] == 0


def test_concurrent_chunk_reads_stay_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "disk.raw"
    data = os.urandom(32 * MIB)
    src.write_bytes(data)
    cli("image", "--chunk-size", "4M", src, tmp_path / "i.img")
    monkeypatch.setattr(reader_mod, "DECODES", limits.ByteBudget(8 * MIB))  # two 4 MiB chunks at a time
    decoding, peak, lock = [0], [0], threading.Lock()
    real = ImageReader.decode_chunk

    def counted(self: ImageReader, *args: object, **kwargs: object) -> bytes:
        with lock:
            decoding[0] += 1
            peak[0] = max(peak[0], decoding[0])
        try:
            return real(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(ImageReader, "decode_chunk", counted)
    with open_image(str(tmp_path / "i.img"), cache_bytes=0, readahead=0) as reader:
        def tail_of(index: int) -> bool:  # the last 4 KiB of each chunk: a whole decode each
            off = index * 4 * MIB + 4 * MIB - 4096
            return reader.read(off, 4096) == data[off : off + 4096]

        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(tail_of, list(range(8)) * 3))
    assert 1 <= peak[0] <= 2
