"""RescueReader over a fault-injecting BlockSource and over a real file whose chosen sectors fail
with EIO (a FUSE filesystem, since device-mapper's dm-error/dm-flakey is not available here)."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from devhelpers import eio_fuse, random_file
from hypothesis import given
from hypothesis import strategies as st

from conftest import need_root
from imaging_utility.blocks import BytesSource, check_range
from imaging_utility.devices.identity import source_identity
from imaging_utility.devices.rescue import RescueReader
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import NotFoundError, SourceIOError
from imaging_utility.extents import Extent, ExtentKind, coalesce


class FaultySource(BytesSource):
    """A disk whose ``bad`` sectors fail every read that touches them, like a real one;
    a sector in ``flaky`` fails its first N reads of exactly that one sector, then works."""

    def __init__(self, data: bytes, bad: set[int], sector_size: int = 512,
                 flaky: dict[int, int] | None = None) -> None:
        super().__init__(data, sector_size)
        self.bad = bad
        self.flaky = dict(flaky or {})
        self.reads: list[tuple[int, int]] = []

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self.size, offset, len(buf))
        self.reads.append((offset, len(buf)))
        ss = self.sector_size
        first, last = offset // ss, (offset + len(buf) - 1) // ss
        touched = set(range(first, last + 1))
        if len(buf) and touched & self.bad:
            buf[:] = b"\xee" * len(buf)  # a failed read may leave garbage behind
            raise SourceIOError(f"injected error in [{offset}, {offset + len(buf)})", offset=offset)
        for s in touched & self.flaky.keys():
            if first != last or self.flaky[s] > 0:
                if first == last:
                    self.flaky[s] -= 1
                raise SourceIOError(f"flaky sector {s}", offset=offset)
        super().readinto_at(offset, buf)


def _expected(offset: int, length: int, bad: set[int], ss: int) -> list[tuple[int, int]]:
    exts = []
    for s in sorted(bad):
        lo, hi = max(s * ss, offset), min((s + 1) * ss, offset + length)
        if lo < hi:
            exts.append(Extent(lo, hi - lo, ExtentKind.UNREADABLE))
    return [(e.offset, e.length) for e in coalesce(exts)]


def _check_chunk(src: FaultySource, reader: RescueReader, offset: int, length: int,
                 reported: list[tuple[int, int]]) -> list[tuple[int, int]]:
    buf = bytearray(b"\xaa" * length)
    bad = reader.read_chunk(offset, buf)
    data = bytes(src._data[offset : offset + length])
    expected = _expected(offset, length, src.bad, src.sector_size)
    assert bad == expected
    assert reported == expected
    want = bytearray(data)
    for off, n in expected:
        want[off - offset : off - offset + n] = bytes(n)
    assert buf == want
    return bad


def test_healthy_chunk_is_one_read() -> None:
    src = FaultySource(random.Random(1).randbytes(1 << 20), bad=set())
    reader = RescueReader(src)
    buf = bytearray(256 << 10)
    for off in range(0, 1 << 20, len(buf)):
        assert reader.read_chunk(off, buf) == []
    assert src.reads == [(off, len(buf)) for off in range(0, 1 << 20, len(buf))]


def test_one_bad_sector_costs_log_reads() -> None:
    src = FaultySource(random.Random(2).randbytes(4 << 20), bad={3000})
    reported: list[tuple[int, int]] = []
    reader = RescueReader(src, on_bad=lambda o, n: reported.append((o, n)))
    _check_chunk(src, reader, 0, 4 << 20, reported)
    # 8192 sectors: 13 halvings of 2 reads each, the first read, and the one retry.
    assert len(src.reads) <= 1 + 2 * 13 + 1


@given(
    sectors=st.integers(1, 96),
    tail=st.integers(0, 511),
    sector_size=st.sampled_from([512, 4096]),
    data=st.data(),
)
def test_recovers_every_readable_sector(sectors: int, tail: int, sector_size: int, data: st.DataObject) -> None:
    size = sectors * sector_size + (tail if sector_size == 512 else 0)
    n_sectors = -(-size // sector_size)
    bad = data.draw(st.sets(st.integers(0, n_sectors - 1), max_size=n_sectors), label="bad")
    offset = data.draw(st.integers(0, size - 1), label="offset")
    length = data.draw(st.integers(1, size - offset), label="length")
    content = random.Random(size).randbytes(size).replace(b"\0", b"\1")  # zero only where bad
    src = FaultySource(content, bad, sector_size)
    reported: list[tuple[int, int]] = []
    reader = RescueReader(src, retries=data.draw(st.integers(0, 2), label="retries"),
                          on_bad=lambda o, n: reported.append((o, n)))
    _check_chunk(src, reader, offset, length, reported)


def test_retries_recover_flaky_sectors() -> None:
    content = random.Random(3).randbytes(64 << 10)
    for fails, retries, recovered in [(1, 1, True), (2, 1, False), (2, 2, True), (1, 0, False)]:
        src = FaultySource(content, bad=set(), flaky={17: fails})
        buf = bytearray(len(content))
        bad = RescueReader(src, retries=retries).read_chunk(0, buf)
        if recovered:
            assert bad == [] and buf == content
        else:
            assert bad == [(17 * 512, 512)] and buf[17 * 512 : 18 * 512] == bytes(512)


def test_other_errors_propagate() -> None:
    class Gone(BytesSource):
        def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
            raise NotFoundError("medium removed from /dev/sr0 while reading byte 0")

    with pytest.raises(NotFoundError):
        RescueReader(Gone(bytes(4096))).read_chunk(0, bytearray(4096))
    with pytest.raises(ValueError, match="outside source"):
        RescueReader(BytesSource(bytes(4096))).read_chunk(4000, bytearray(200))


def test_fuse_eio_file(tmp_path: Path) -> None:
    need_root()
    backing = tmp_path / "backing.img"
    content = random_file(backing, 2 << 20, seed=9)
    bad = {5, 6, 7, 100, 2047, 3000, 4095}
    with eio_fuse(backing, tmp_path / "fuse", bad) as path, FileSource(path) as src:
        assert src.size == 2 << 20
        with pytest.raises(SourceIOError) as exc:
            src.readinto_at(100 * 512, bytearray(512))
        assert exc.value.offset == 100 * 512 and exc.value.exit_code == 6
        assert str(exc.value) == f"read error on {path} at byte 51200 (sector 100): Input/output error"
        buf = bytearray(512)
        src.readinto_at(99 * 512, buf)
        assert buf == content[99 * 512 : 100 * 512]

        reported: list[tuple[int, int]] = []
        reader = RescueReader(src, on_bad=lambda o, n: reported.append((o, n)))
        chunk = bytearray(1 << 20)
        all_bad = []
        for off in (0, 1 << 20):
            got = reader.read_chunk(off, chunk)
            all_bad += got
            want = bytearray(content[off : off + len(chunk)])
            for o, n in got:
                want[o - off : o - off + n] = bytes(n)
            assert chunk == want
        assert all_bad == reported == [(5 * 512, 3 * 512), (100 * 512, 512), (2047 * 512, 512),
                                       (3000 * 512, 512), (4095 * 512, 512)]


def test_loop_device_over_eio_file(loopdev: Callable[..., str], tmp_path: Path) -> None:
    """A real block device with bad sectors: a loop device backed by the FUSE file."""
    backing = tmp_path / "backing.img"
    content = random_file(backing, 2 << 20, seed=11)
    bad = {0, 5, 6, 7, 100, 4095}
    with eio_fuse(backing, tmp_path / "fuse", bad) as path:
        dev = loopdev(path)
        try:
            with FileSource(dev, direct=True) as src:
                ident = source_identity(dev, src)  # an unreadable sector 0 must not stop it
                assert ident["partition_table"] is None and ident["backing_file"] == path
                with pytest.raises(SourceIOError, match=r"at byte 51200 \(sector 100\)"):
                    src.readinto_at(100 * 512, bytearray(4096))
                got = _rescue_all(src, content)
                # O_DIRECT: the device's own sectors.
                assert got == [(0, 512), (5 * 512, 3 * 512), (100 * 512, 512), (4095 * 512, 512)]
            with FileSource(dev) as src:
                # Through the page cache a bad sector costs its whole page, and no more.
                assert _rescue_all(src, content) == [(0, 4096), (12 * 4096, 4096), (511 * 4096, 4096)]
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)  # before the FUSE file goes away


def _rescue_all(src: FileSource, content: bytes) -> list[tuple[int, int]]:
    reader = RescueReader(src)
    chunk = src.alloc_buffer(1 << 20)
    found = []
    for off in range(0, src.size, len(chunk)):
        got = reader.read_chunk(off, chunk)
        want = bytearray(content[off : off + len(chunk)])
        for o, n in got:
            want[o - off : o - off + n] = bytes(n)
        assert chunk[:] == want
        found += got
    return found
