"""Btrfs data checksums (``filesystems/btrfs_csum.py``): file data read for ``extract``/``ls``/``webdav``
is checked against the checksum tree as the kernel checks it, whichever of the four checksum types.
A damaged sector is an error where the kernel gives EIO, never different bytes; data the kernel does
not checksum (``nodatacow``) reads as the kernel reads it; reads at any offset of a sound volume raise
nothing."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import lfsbuild
import pytest
from lfscases import require

import fsbuild
from conftest import cli
from imaging_utility.crc32c import crc32c
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems import btrfs
from imaging_utility.filesystems.tree import open_tree

Volume = tuple[Path, dict[str, bytes]]


def _build(path: Path, csum: str, *mkfs: str, size_mib: int = 128) -> dict[str, bytes]:
    rnd = random.Random(csum)
    fsbuild.random_image(path, size_mib, 43)
    lfsbuild.run("mkfs.btrfs", "-q", "-f", "--csum", csum, *mkfs, path)
    files = {
        "plain.bin": rnd.randbytes(300_000 + 77),
        "z/words.txt": b" ".join(rnd.choice([b"alpha", b"beta", b"gamma", b"delta"]) for _ in range(90_000)),
        "nocow.bin": rnd.randbytes(50_000),
    }
    with lfsbuild.mounted(path) as mnt:
        (mnt / "z").mkdir()
        lfsbuild.run("btrfs", "property", "set", mnt / "z", "compression", "zstd")
        (mnt / "nocow.bin").touch()
        lfsbuild.run("chattr", "+C", mnt / "nocow.bin")  # nodatacow: no data checksums
        for name, data in files.items():
            (mnt / name).write_bytes(data)
        os.sync()
    return files


@pytest.fixture(scope="module")
def crc32c_volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    require("btrfs")
    path = tmp_path_factory.mktemp("btrfssums") / "btrfs.img"
    return path, _build(path, "crc32c")


def _device_offset(path: Path, name: str, copy: int = 0) -> int:
    """Where the first extent of ``name`` is on the device (compressed: its stored bytes), in the chunk's
    first copy or in another one (DUP)."""
    with lfsbuild.mounted(path, read_only=True) as mnt:
        out = lfsbuild.run("filefrag", "-v", "-b4096", mnt / name)
    first = re.search(r"^\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.", out, re.M)
    assert first, out
    logical = int(first.group(1)) * 4096
    source = FileSource(str(path))
    sb = btrfs.probe(source)
    assert sb is not None
    chunk = btrfs.read_chunks(source, sb).find(logical, 1)
    return chunk.stripes[copy] + logical - chunk.logical


def _damaged(vol: Volume, name: str, at: int, tmp_path: Path, copies: tuple[int, ...] = (0,)) -> Path:
    path = tmp_path / "damaged.img"
    shutil.copyfile(vol[0], path)
    for copy in copies:
        where = _device_offset(path, name, copy) + at
        with open(path, "r+b") as f:
            f.seek(where)
            byte = f.read(1)[0]
            f.seek(where)
            f.write(bytes([byte ^ 0x5A]))
    return path


def _kernel_read(path: Path, name: str) -> bytes | int:
    """The file as the kernel reads it, or the errno it fails with."""
    subprocess.run(["sync"], check=True)
    with lfsbuild.mounted(path, read_only=True) as mnt:
        try:
            return (mnt / name).read_bytes()
        except OSError as e:
            return e.errno or -1


def test_sound_volume_reads_at_any_offset(crc32c_volume: Volume) -> None:
    """Reads that start and end inside sectors check the whole sectors they touch, and never fail on
    sound data (the last sector of a file is only partly the file's)."""
    path, files = crc32c_volume
    tree = open_tree(FileSource(str(path)))
    for name, data in files.items():
        with tree.open("/" + name) as f:
            for start, n in ((0, 1), (4095, 2), (4096, 4096), (len(data) - 3, 3), (5000, 70_001)):
                f.seek(start)
                assert f.read(n) == data[start : start + n], (name, start, n)
            f.seek(0)
            got = bytearray()
            while chunk := f.read(3001):
                got += chunk
            assert bytes(got) == data


@pytest.mark.parametrize("name, at", [("plain.bin", 8192 + 100), ("z/words.txt", 100)],
                         ids=["plain", "compressed"])
def test_damaged_sector_is_an_error_like_the_kernels_eio(crc32c_volume: Volume, name: str, at: int,
                                                         tmp_path: Path) -> None:
    vol = crc32c_volume
    path = _damaged(vol, name, at, tmp_path)
    assert _kernel_read(path, name) == errno.EIO
    proc = cli("extract", path, "/", tmp_path / "out", check=3)
    assert f"/{name}: btrfs inode" in proc.stderr and "data checksum" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for other, data in vol[1].items():  # the rest of the volume is extracted, intact
        if other != name:
            assert (tmp_path / "out" / other).read_bytes() == data
    with pytest.raises(CorruptImageError, match="data checksum"), \
            open_tree(FileSource(str(path))).open("/" + name) as f:
        f.read()


def test_data_without_checksums_reads_as_the_kernel_reads_it(crc32c_volume: Volume, tmp_path: Path) -> None:
    path = _damaged(crc32c_volume, "nocow.bin", 100, tmp_path)
    kernel = _kernel_read(path, "nocow.bin")
    assert isinstance(kernel, bytes) and kernel != crc32c_volume[1]["nocow.bin"]
    cli("extract", path, "/nocow.bin", tmp_path / "out")
    assert (tmp_path / "out" / "nocow.bin").read_bytes() == kernel


@pytest.mark.parametrize("csum", ["sha256", "blake2", "xxhash"])
def test_every_checksum_type(csum: str, tmp_path: Path) -> None:
    """The other three checksum types btrfs has are checked as CRC-32C is (tree blocks and data)."""
    require("btrfs")
    path = tmp_path / "vol.img"
    files = _build(path, csum)
    cli("extract", path, "/", tmp_path / "sound")
    for name, data in files.items():
        assert (tmp_path / "sound" / name).read_bytes() == data
    damaged = _damaged((path, files), "plain.bin", 5000, tmp_path)
    proc = cli("extract", damaged, "/plain.bin", tmp_path / "out", check=3)
    assert "data checksum" in proc.stderr, proc.stderr
    with open(damaged, "r+b") as f:  # the label: covered by the superblock's checksum only
        f.seek(64 * 1024 + 299)
        f.write(b"\xff")
    proc = cli("ls", damaged, check=None)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr


def test_dup_data_is_read_from_the_copy_that_matches(tmp_path: Path) -> None:
    """With DUP data, a sector damaged in one copy is read from the other, as the kernel does; damaged in
    both, it is an error."""
    require("btrfs")
    path = tmp_path / "dup.img"
    files = _build(path, "crc32c", "-d", "dup", "-m", "dup", size_mib=320)
    for name, at in (("plain.bin", 8192 + 100), ("z/words.txt", 100)):
        for copy in (0, 1):
            damaged = _damaged((path, files), name, at, tmp_path, (copy,))
            assert _kernel_read(damaged, name) == files[name]
            out = tmp_path / f"out{copy}"
            cli("extract", damaged, "/" + name, out)
            assert (out / Path(name).name).read_bytes() == files[name], (name, copy)
            with open_tree(FileSource(str(damaged))).open("/" + name) as f:
                f.seek(at - 5)
                assert f.read(11) == files[name][at - 5 : at + 6]  # a read inside the damaged sector
            shutil.rmtree(out)
        damaged = _damaged((path, files), name, at, tmp_path, (0, 1))
        assert _kernel_read(damaged, name) == errno.EIO
        proc = cli("extract", damaged, "/" + name, tmp_path / "both", check=3)
        assert "does not match in both copies" in proc.stderr, proc.stderr


def _csum_hole(path: Path, logical: int, sectors: int) -> None:
    """Take the checksums of the first ``sectors`` sectors from ``logical`` out of the checksum tree: its
    last item (a volume with one data file has one) starts that many sectors later, its data as much
    later, every copy of the leaf rewritten with a valid block checksum."""
    image = bytearray(path.read_bytes())
    leaves = 0
    for at in range(0, len(image), 4096):
        if struct.unpack_from("<Q", image, at + 88)[0] != 7 or image[at + 100] != 0 \
                or image[at + 32 : at + 48] != image[64 * 1024 + 32 : 64 * 1024 + 48]:  # fsid
            continue
        block = memoryview(image)[at : at + 16384]
        item = 101 + (struct.unpack_from("<I", block, 96)[0] - 1) * 25
        objectid, kind, start, offset, size = struct.unpack_from("<QBQII", block, item)
        if (kind, start) != (128, logical) or size <= sectors * 4:
            continue
        struct.pack_into("<QBQII", block, item, objectid, kind, start + sectors * 4096, offset + sectors * 4,
                         size - sectors * 4)
        struct.pack_into("<I", block, 0, crc32c(block[32:]))
        leaves += 1
    assert leaves, "no checksum leaf starts at the file's extent"
    path.write_bytes(image)


def test_sector_without_checksum_is_an_error_like_the_kernels_eio(tmp_path: Path) -> None:
    """A sector of a checksummed file that has no checksum is a damaged checksum tree: the kernel fails the
    read ("csum hole found"), and so do we; the sectors after it read as they are."""
    require("btrfs")
    path = tmp_path / "hole.img"
    fsbuild.random_image(path, 128, 47)
    lfsbuild.run("mkfs.btrfs", "-q", "-f", path)
    data = random.Random(47).randbytes(1 << 20)
    with lfsbuild.mounted(path) as mnt:
        (mnt / "f").write_bytes(data)
        os.sync()
    source = FileSource(str(path))
    sb = btrfs.probe(source)
    assert sb is not None
    chunks = btrfs.read_chunks(source, sb)
    with lfsbuild.mounted(path, read_only=True) as mnt:
        out = lfsbuild.run("filefrag", "-v", "-b4096", mnt / "f")
    first = re.search(r"^\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.", out, re.M)
    assert first and chunks.find(int(first.group(1)) * 4096, 1), out
    _csum_hole(path, int(first.group(1)) * 4096, 4)
    assert _kernel_read(path, "f") == errno.EIO
    proc = cli("extract", path, "/f", tmp_path / "out", check=3)
    assert "has no data checksum" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    with open_tree(FileSource(str(path))).open("/f") as f:
        f.seek(4 * 4096)
        assert f.read() == data[4 * 4096 :]  # past the hole: checked and sound
        f.seek(4 * 4096 - 1)
        with pytest.raises(CorruptImageError, match="has no data checksum"):
            f.read(2)
