"""Large aligned reads of a buffered block device go past the page cache (``read_large_direct``), checked
with mincore(2) on the real loop device's page cache; short or unaligned reads and mounted devices do not."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from devhelpers import mkfs_ext4, mounted, random_file

from conftest import cli
from imagetools import resident
from imaging_utility.devices import source as source_mod
from imaging_utility.devices.source import DIRECT_MIN, FileSource, aligned_buffer
from imaging_utility.image.reader import open_image
from imaging_utility.ops.reading import _pieces, read_direct_when_safe

LoopDev = Callable[..., str]
MiB = 1 << 20

@contextmanager
def held_open(dev: str) -> Iterator[None]:
    """Keep ``dev`` open: its page cache is dropped when the last opener closes it."""
    fd = os.open(dev, os.O_RDONLY)
    try:
        yield
    finally:
        os.close(fd)


@pytest.fixture
def random_loop(loopdev: LoopDev, tmp_path: Path) -> tuple[str, bytes]:
    data = random_file(tmp_path / "disk.raw", 32 * MiB, seed=11)
    return loopdev(tmp_path / "disk.raw"), data


def test_large_aligned_reads_bypass_the_page_cache(random_loop: tuple[str, bytes]) -> None:
    dev, data = random_loop
    with held_open(dev), FileSource(dev) as src:
        # buffered, as every source starts: a large read fills the page cache (the check below can fail)
        buf = aligned_buffer(4 * MiB)
        src.readinto_at(0, buf)
        assert bytes(buf) == data[: 4 * MiB] and resident(dev, 0, 4 * MiB) == 4 * MiB

        assert src.read_large_direct()
        assert src.reads_direct(8 * MiB, DIRECT_MIN) and not src.reads_direct(8 * MiB, DIRECT_MIN - 4096)
        assert not src.reads_direct(8 * MiB + 100, 2 * MiB) and src.reads_direct(32 * MiB - MiB, MiB)
        src.readinto_at(8 * MiB, buf)
        assert bytes(buf) == data[8 * MiB : 12 * MiB]
        assert resident(dev, 8 * MiB, 4 * MiB) == 0

        # short, unaligned-offset and unaligned-buffer reads stay buffered, and right
        small = bytearray(64 * 1024)
        src.readinto_at(16 * MiB, small)
        assert bytes(small) == data[16 * MiB : 16 * MiB + len(small)] and resident(dev, 16 * MiB, 64 * 1024) > 0
        odd = memoryview(bytearray(MiB + 1))[1:]
        src.readinto_at(20 * MiB, odd)
        assert bytes(odd) == data[20 * MiB : 21 * MiB] and resident(dev, 20 * MiB, MiB) > 0
        off = memoryview(aligned_buffer(2 * MiB))[: MiB + 512]
        src.readinto_at(24 * MiB + 512, off)
        assert bytes(off) == data[24 * MiB + 512 : 25 * MiB + 1024]


def test_refused_direct_read_falls_back_to_buffered(random_loop: tuple[str, bytes],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that wants stricter O_DIRECT alignment than it reports answers EINVAL (cannot be made
    here): the read is done buffered, and so are the later ones."""
    dev, data = random_loop
    with FileSource(dev) as src:
        assert src.read_large_direct()
        real = os.preadv
        direct_fd = src._direct_fd
        calls = {"direct": 0}

        def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
            if fd == direct_fd:
                calls["direct"] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, buffers, offset)

        monkeypatch.setattr(source_mod.os, "preadv", preadv)
        buf = aligned_buffer(2 * MiB)
        src.readinto_at(2 * MiB, buf)
        src.readinto_at(4 * MiB, buf)
        assert bytes(buf) == data[4 * MiB : 6 * MiB] and calls["direct"] == 1
        assert not src.reads_direct(0, 2 * MiB)


def test_regular_files_and_direct_sources_keep_their_mode(tmp_path: Path, random_loop: tuple[str, bytes]) -> None:
    path = tmp_path / "file.raw"
    random_file(path, 4 * MiB)
    with FileSource(str(path)) as src:
        assert not src.read_large_direct() and not read_direct_when_safe(src, str(path))
    dev, _ = random_loop
    with FileSource(dev, direct=True) as src:
        assert not src.read_large_direct() and src.reads_direct(512, 512)


def test_only_devices_without_a_read_write_mount(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "ext4.img"
    image.write_bytes(bytes(16 * MiB))
    mkfs_ext4(image)
    dev = loopdev(image)
    with FileSource(dev) as src:
        with mounted(dev, tmp_path / "rw"):
            assert not read_direct_when_safe(src, dev)  # its newest data may be in the page cache only
            assert not src.reads_direct(0, MiB)
        with mounted(dev, tmp_path / "ro", read_only=True):
            assert read_direct_when_safe(src, dev) and src.reads_direct(0, MiB)


def test_pieces_follow_the_chunks() -> None:
    assert _pieces(100, 50, 0) == [(100, 50)]
    assert _pieces(MiB - 10, MiB + 20, MiB) == [(MiB - 10, 10), (MiB, MiB), (2 * MiB, 10)]
    assert _pieces(2 * MiB, MiB, MiB) == [(2 * MiB, MiB)]


@pytest.mark.parametrize("command", ["image", "backup-disk"])
def test_captures_of_a_device_read_it_past_the_page_cache(command: str, random_loop: tuple[str, bytes],
                                                          tmp_path: Path) -> None:
    """``image`` and ``backup-disk`` of an unmounted device: the image is exact and the device's data did
    not pass through its page cache (held open by the test so that the cache outlives the command)."""
    dev, data = random_loop
    dest = tmp_path / "out"
    with held_open(dev):
        args = [str(dest / "d.img.zst")] if command == "image" else [str(dest)]
        if command == "image":
            dest.mkdir()
        cli(command, dev, *args)
        assert resident(dev, 0, len(data)) <= 2 * MiB  # table probes and the like only
    image = dest / "d.img.zst" if command == "image" else next(dest.glob("*.img.zst"))
    with open_image(str(image)) as reader:
        assert reader.read(0, len(data)) == data


@pytest.mark.parametrize("command", ["image", "backup-disk"])
def test_buffered_keeps_every_read_in_the_page_cache(command: str, random_loop: tuple[str, bytes],
                                                     tmp_path: Path) -> None:
    """``--buffered`` (a device slow or wrong with O_DIRECT) reads everything through the page cache;
    ``--direct`` with it is a usage error."""
    dev, data = random_loop
    dest = tmp_path / "out"
    dest.mkdir()
    target = [str(dest / "d.img.zst")] if command == "image" else [str(dest / "set")]
    with held_open(dev):
        cli(command, "--buffered", dev, *target)
        assert resident(dev, 0, len(data)) >= len(data) * 3 // 4
    image = dest / "d.img.zst" if command == "image" else next((dest / "set").glob("*.img.zst"))
    with open_image(str(image)) as reader:
        assert reader.read(0, len(data)) == data
    both = cli(command, "--direct", "--buffered", dev, str(dest / "other"), check=2)
    assert "not allowed with argument" in both.stderr
