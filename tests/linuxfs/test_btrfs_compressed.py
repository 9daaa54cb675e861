"""Btrfs compressed and inline file data (``filesystems/btrfs_extent.py``): every algorithm the kernel
writes reads back as the kernel wrote it, and a hostile extent is one clear error with bounded memory."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import lfsbuild
import pytest
import zstandard
from lfscases import require

import fsbuild
from conftest import cli
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems import btrfs_extent
from imaging_utility.filesystems.btrfs_extent import COMPRESS_LZO, COMPRESS_ZLIB, COMPRESS_ZSTD, MAX_EXTENT, decode

ALGOS = ("zlib", "lzo", "zstd")


def _text(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefghij klmnop", k=rnd.randrange(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A Btrfs with a directory per algorithm (``btrfs property set … compression``): files of one
    sector, of several 128 KiB extents with a short tail, an inline one, one rewritten in the middle
    (an extent used only in part), and incompressible data beside them."""
    require("btrfs")
    path = tmp_path_factory.mktemp("btrfscomp") / "btrfs.img"
    fsbuild.random_image(path, 128, 31)
    lfsbuild.run("mkfs.btrfs", "-q", "-f", path)
    with lfsbuild.mounted(path) as mnt:
        for i, algo in enumerate(ALGOS):
            d = mnt / algo
            d.mkdir()
            lfsbuild.run("btrfs", "property", "set", d, "compression", algo)
            (d / "inline.txt").write_bytes(_text(1500, i))
            (d / "sector.txt").write_bytes(_text(4096, i + 10))
            (d / "large.txt").write_bytes(_text(700_000 + 123, i + 20))
            (d / "random.bin").write_bytes(os.urandom(200_000))
            shutil.copyfile(d / "large.txt", d / "patched.txt")
            os.sync()
            with open(d / "patched.txt", "r+b") as f:  # the middle of an extent replaced: partial references
                f.seek(150_000)
                f.write(b"X" * 5000)
        os.sync()
        expected = lfsbuild.hash_regular(mnt)
    return path, expected


def test_every_algorithm_reads_as_the_kernel_wrote_it(compressed: tuple[Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    path, expected = compressed
    cli("extract", path, "/", tmp_path / "out")
    got = lfsbuild.hash_regular(tmp_path / "out")
    assert got == expected
    assert {f"{a}/large.txt" for a in ALGOS} <= set(got)


def test_webdav_style_reads_at_any_offset(compressed: tuple[Path, dict[str, str]]) -> None:
    """Reads that start and end inside compressed extents (what FUSE and WebDAV ask for)."""
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems.tree import open_tree

    path, _ = compressed
    want = _text(700_000 + 123, 1 + 20)
    with FileSource(str(path)) as src:
        tree = open_tree(src)
        with tree.open("/lzo/large.txt") as f:
            for off, n in ((0, 10), (131_071, 3), (262_000, 70_000), (699_000, 5000), (5, 700_118)):
                f.seek(off)
                assert f.read(n) == want[off : off + n]


def _corrupt_first_frame(path: Path) -> None:
    """Damage the first zstd frame found past the first MiB (a compressed extent's data)."""
    data = path.read_bytes()
    at = data.index(b"\x28\xb5\x2f\xfd", 1 << 20)
    with open(path, "r+b") as f:
        f.seek(at + 12)
        f.write(b"\xff" * 200)


def test_a_damaged_extent_is_one_line_and_the_rest_is_extracted(compressed: tuple[Path, dict[str, str]],
                                                                tmp_path: Path) -> None:
    """The data checksum catches the damage first; on a volume whose checksums were rewritten to match
    it (checks off here), the zstd decoder refuses the stream."""
    src, expected = compressed
    path = tmp_path / "damaged.img"
    shutil.copyfile(src, path)
    _corrupt_first_frame(path)
    proc = cli("extract", path, "/zstd", tmp_path / "out", check=3)
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert lines and all("data checksum" in line for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    got = lfsbuild.hash_regular(tmp_path / "out")
    assert got["zstd/random.bin"] == expected["zstd/random.bin"]
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems.tree import open_tree

    with FileSource(str(path)) as source:
        tree = open_tree(source)
        tree.backend.sums = None
        damaged = [e.path for e in tree.walk("/zstd") if e.type == "file"]
        errors = []
        for name in damaged:
            try:
                with tree.open(name) as f:
                    f.read()
            except CorruptImageError as e:
                errors.append(str(e))
        assert errors and all("zstd data does not decompress" in e for e in errors), errors


# --- the decoders, on hostile streams -----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_decompression_bombs_stop_at_what_the_extent_claims() -> None:
    """Streams in a 128 KiB extent that would expand to 256 MiB or 1 GiB (a zstd frame with its size in the
    header, one without): each is an error, and this process's peak memory (reset first, through
    ``clear_refs``) stays near where it was."""
    bomb_zlib = zlib.compress(bytes(256 << 20), 9)[:MAX_EXTENT]
    bomb_zstd = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))
    stream = zstandard.ZstdCompressor(level=19, write_content_size=False).compressobj()
    bomb_zstd_unsized = stream.compress(bytes(1 << 30)) + stream.flush()
    assert max(len(bomb_zstd), len(bomb_zstd_unsized)) < MAX_EXTENT
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    for algo, bomb in ((COMPRESS_ZLIB, bomb_zlib), (COMPRESS_ZSTD, bomb_zstd), (COMPRESS_ZSTD, bomb_zstd_unsized)):
        with pytest.raises(CorruptImageError, match=r"expands past|frame of|does not decompress"):
            decode(bomb, algo, MAX_EXTENT, 4096, "test")
    assert _status_kib("VmHWM") - base < 32 << 10


def test_a_stream_of_exactly_its_size_and_padding() -> None:
    """What the kernel writes: the stream, then zeros to the end of the sector."""
    data = _text(MAX_EXTENT, 5)
    assert decode(zlib.compress(data) + bytes(1000), COMPRESS_ZLIB, MAX_EXTENT, 4096, "t") == data
    assert decode(zstandard.ZstdCompressor().compress(data) + bytes(1000), COMPRESS_ZSTD, MAX_EXTENT, 4096,
                  "t") == data


@pytest.mark.parametrize("claim", [MAX_EXTENT + 1, 1 << 40, -1])
def test_sizes_past_what_btrfs_writes_are_refused(claim: int) -> None:
    with pytest.raises(CorruptImageError, match="claims"):
        decode(zlib.compress(b"x"), COMPRESS_ZLIB, claim, 4096, "test")
    with pytest.raises(CorruptImageError, match="claims"):
        btrfs_extent.check_compressed(4096, claim, 0, 1, "test")


@pytest.mark.parametrize("algo,stream", [
    (COMPRESS_ZLIB, zlib.compress(b"hello" * 1000)[:20]),  # cut short
    (COMPRESS_ZLIB, b"\x78\x9c" + bytes(range(200))),  # garbage after a header
    (COMPRESS_ZSTD, b"\x28\xb5\x2f\xfd" + bytes(range(255)) * 4),
    (COMPRESS_LZO, (100).to_bytes(4, "little") + (90_000).to_bytes(4, "little") + bytes(92)),  # segment too long
    (COMPRESS_LZO, (40).to_bytes(4, "little") + (32).to_bytes(4, "little") + b"\xff" * 32),  # not LZO1X
])
def test_broken_streams_are_errors(algo: int, stream: bytes) -> None:
    with pytest.raises(CorruptImageError, match=r"decompress|segment"):
        decode(stream, algo, 5000, 4096, "btrfs inode 257")


def test_a_stream_that_ends_early_reads_as_zeros_after_it() -> None:
    """As the kernel does: a clean end before ``ram_bytes`` leaves zeros."""
    assert decode(zlib.compress(b"abc"), COMPRESS_ZLIB, 8, 4096, "t") == b"abc" + bytes(5)
    assert decode(zstandard.ZstdCompressor().compress(b"abc") + bytes(100), COMPRESS_ZSTD, 8, 4096, "t") == \
        b"abc" + bytes(5)


def test_a_missing_module_is_named_not_taken_for_damage(compressed: tuple[Path, dict[str, str]]) -> None:
    """An installation without a module a filesystem reader needs: the message says what to install
    (exit 4), where it said "btrfs filesystem: cannot open its root structures" (exit 8)."""
    path, _ = compressed
    code = ("import sys; sys.modules['dissect.btrfs'] = None; from imaging_utility.cli.main import main; "
            f"sys.exit(main(['ls', {str(path)!r}, '/']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4, proc.stderr
    assert "the Python module 'dissect.btrfs', which is not installed: pip install dissect.btrfs" in proc.stderr
