"""FileSource on regular files and real loop devices (512- and 4096-byte sectors, partitions),
buffered and O_DIRECT, aligned and through the bounce buffer."""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from devhelpers import partitions, random_file, sfdisk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import need_tools
from imaging_utility.blocks import BlockSource
from imaging_utility.devices.source import FileSource, aligned_buffer, buffer_address, open_error
from imaging_utility.errors import (
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
    SourceIOError,
    UnsupportedError,
)

LoopDev = Callable[..., str]
MiB = 1 << 20
ODD = 4 * MiB + 1234  # a regular file whose size is no multiple of anything


@pytest.fixture(scope="module")
def odd_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("src") / "odd.bin"
    return path, random_file(path, ODD, seed=7)


def _blockdev(dev: str) -> tuple[int, int, int]:
    need_tools("blockdev")
    out = subprocess.run(["blockdev", "--getss", "--getpbsz", "--getsize64", dev],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def _read(src: FileSource, offset: int, length: int, use_mmap: bool) -> bytes:
    if use_mmap:
        buf = aligned_buffer(length)
        src.readinto_at(offset, memoryview(buf)[:length])
        return bytes(buf[:length])
    ba = bytearray(length)
    src.readinto_at(offset, ba)
    return bytes(ba)


def _check_reads(src: FileSource, data: bytes, seed: int, n: int = 60) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        off = rng.randrange(src.size)
        length = rng.randrange(1, min(src.size - off, 3 * MiB) + 1)
        for use_mmap in (False, True):
            assert _read(src, off, length, use_mmap) == data[off : off + length], (off, length)
    assert _read(src, 0, src.size, True) == data


def test_regular_file_attributes_and_reads(odd_file: tuple[Path, bytes]) -> None:
    path, data = odd_file
    for direct in (False, True):
        with FileSource(str(path), direct=direct) as src:
            assert isinstance(src, BlockSource)
            assert (src.size, src.sector_size, src.physical_sector_size) == (ODD, 512, 512)
            assert not src.is_block_device
            _check_reads(src, data, seed=direct)
            tail = src.size - 1000  # the unaligned tail of an O_DIRECT file read through the bounce buffer
            assert _read(src, tail, 1000, False) == data[tail:]


@settings(max_examples=60)
@given(off=st.integers(0, ODD - 1), length=st.integers(1, 600_000), use_mmap=st.booleans())
def test_regular_file_direct_any_range(odd_file: tuple[Path, bytes], off: int, length: int,
                                       use_mmap: bool) -> None:
    path, data = odd_file
    length = min(length, ODD - off)
    with FileSource(str(path), direct=True) as src:
        assert _read(src, off, length, use_mmap) == data[off : off + length]


def test_out_of_range_and_empty(odd_file: tuple[Path, bytes]) -> None:
    with FileSource(str(odd_file[0])) as src:
        with pytest.raises(ValueError, match="outside source"):
            src.readinto_at(ODD - 10, bytearray(11))
        src.readinto_at(ODD, bytearray(0))
        assert src.extents(0, ODD)[0].length == ODD


def test_aligned_buffer_is_page_aligned() -> None:
    for n in (1, 4096, 3 * MiB + 17):
        buf = aligned_buffer(n)
        assert len(buf) == n and buffer_address(memoryview(buf)) % mmap.PAGESIZE == 0


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"not found: .*nope") as exc:
        FileSource(str(tmp_path / "nope"))
    assert exc.value.exit_code == 4
    for path, text in ((str(tmp_path), "is a directory"), ("/dev/null", "neither"),
                       ("/proc/self/status", "says it is 0 bytes long but has data")):
        for direct in (False, True):
            with pytest.raises(UnsupportedError, match=text) as unusable:
                FileSource(path, direct=direct)
            assert unusable.value.exit_code == 4
    (tmp_path / "empty").touch()  # truly empty: a source of 0 bytes
    assert FileSource(str(tmp_path / "empty")).size == 0


@pytest.mark.parametrize(("code", "cls", "exit_code", "text"), [
    (errno.ENOENT, NotFoundError, 4, "not found: /dev/x"),
    (errno.EACCES, PermissionDeniedError, 5, "permission denied opening /dev/x"),
    (errno.EPERM, PermissionDeniedError, 5, "permission denied opening /dev/x"),
    (errno.EBUSY, RefusedError, 9, "/dev/x: device busy"),
    (errno.ENOMEDIUM, NotFoundError, 4, "no medium in /dev/x"),
    (errno.EIO, SourceIOError, 6, "cannot open /dev/x: Input/output error"),
])
def test_open_error_mapping(code: int, cls: type[Exception], exit_code: int, text: str) -> None:
    err = open_error("/dev/x", OSError(code, os.strerror(code)))
    assert type(err) is cls and err.exit_code == exit_code and text in str(err)
    assert "\n" not in str(err)


def test_direct_unsupported_is_reported(odd_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    # Filesystems without O_DIRECT support fail the open with EINVAL; none is at hand here.
    real_open = os.open

    def fake_open(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(UnsupportedError, match="does not support O_DIRECT; run without --direct"):
        FileSource(str(odd_file[0]), direct=True)
    FileSource(str(odd_file[0])).close()


def test_loop_512(loopdev: LoopDev, tmp_path: Path) -> None:
    data = random_file(tmp_path / "disk.img", 8 * MiB)
    dev = loopdev(tmp_path / "disk.img")
    logical, physical, size = _blockdev(dev)
    for direct in (False, True):
        with FileSource(dev, direct=direct) as src:
            assert src.is_block_device
            assert (src.size, src.sector_size, src.physical_sector_size) == (size, logical, physical)
            assert (size, logical) == (8 * MiB, 512)
            _check_reads(src, data, seed=direct)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(off=st.integers(0, 8 * MiB - 1), length=st.integers(1, 300_000), use_mmap=st.booleans())
def test_loop_4096_direct_any_range(loop4k: tuple[str, bytes], off: int, length: int,
                                    use_mmap: bool) -> None:
    dev, data = loop4k
    length = min(length, len(data) - off)
    with FileSource(dev, direct=True) as src:
        assert _read(src, off, length, use_mmap) == data[off : off + length]


@pytest.fixture
def loop4k(loopdev: LoopDev, tmp_path: Path) -> tuple[str, bytes]:
    data = random_file(tmp_path / "disk4k.img", 8 * MiB, seed=4)
    return loopdev(tmp_path / "disk4k.img", sector_size=4096), data


def test_loop_4096(loop4k: tuple[str, bytes]) -> None:
    dev, data = loop4k
    assert _blockdev(dev) == (4096, 4096, 8 * MiB)
    # The raw device really refuses unaligned O_DIRECT, so the passing reads below went
    # through the bounce buffer rather than getting lucky.
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as exc:
            os.preadv(fd, [aligned_buffer(4096)], 512)
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    for direct in (False, True):
        with FileSource(dev, direct=direct) as src:
            assert (src.size, src.sector_size, src.physical_sector_size, src.alignment) == (
                8 * MiB, 4096, 4096, 4096)
            _check_reads(src, data, seed=direct)
            assert _read(src, 512, 100, False) == data[512:612]
            # Aligned range, misaligned memory (a bytearray, or an mmap view 16 bytes in): the
            # device refuses such a buffer with EINVAL, so this must take the bounce path too.
            backing = aligned_buffer(3 * 65536)
            for buf in (bytearray(65536), memoryview(backing)[16 : 16 + 65536]):
                src.readinto_at(4096 * 3, buf)
                assert buf == data[4096 * 3 : 4096 * 3 + 65536]


def test_loop_4096_direct_threads(loop4k: tuple[str, bytes]) -> None:
    dev, data = loop4k
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            _check_reads(src, data, seed=seed, n=30)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    with FileSource(dev, direct=True) as src:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_partitioned_loop(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "parted.img"
    data = bytearray(random_file(image, 16 * MiB, seed=3))
    sfdisk(image, "label: dos\nlabel-id: 0x12345678\nstart=2048, size=8192, type=83\n"
                  "start=10240, type=83\n")
    data[:] = image.read_bytes()  # sfdisk wrote the MBR
    dev = loopdev(image, partscan=True)
    p1, p2 = partitions(dev, 2)
    for part, start, size in ((p1, 2048 * 512, 8192 * 512), (p2, 10240 * 512, 16 * MiB - 10240 * 512)):
        for direct in (False, True):
            with FileSource(part, direct=direct) as src:
                assert (src.size, src.sector_size) == (size, 512)
                assert _read(src, 0, size, True) == data[start : start + size]
                assert _read(src, 1000, 5000, False) == data[start + 1000 : start + 6000]
    with FileSource(dev) as whole:
        assert whole.size == 16 * MiB and _read(whole, 0, 16 * MiB, False) == data


def test_direct_aligned_read_is_one_syscall_into_the_callers_buffer(
        loop4k: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    dev, data = loop4k
    calls: list[tuple[int, int, int]] = []
    real_preadv = os.preadv

    def spy(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append((buffer_address(buffers[0]), len(buffers[0]), offset))
        return real_preadv(fd, buffers, offset)

    buf = aligned_buffer(1 * MiB)
    with FileSource(dev, direct=True) as src:
        monkeypatch.setattr(os, "preadv", spy)
        src.readinto_at(2 * MiB, buf)
        monkeypatch.undo()
    assert calls == [(buffer_address(memoryview(buf)), MiB, 2 * MiB)]
    assert buf[:] == data[2 * MiB : 3 * MiB]
