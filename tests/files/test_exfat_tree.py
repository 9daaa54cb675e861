"""exFAT files read by our own directory reader (``tree_exfat``), against volumes written by exfat-fuse:
names whose UTF-16 surrogate pairs span two File Name entries, ValidDataLength short of DataLength (the
rest reads as zeros, whatever the clusters hold), a Vendor Allocation entry in a set, and damaged sets
(listed as damaged, the rest of the directory listed)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import exfat
from imaging_utility.filesystems.tree_exfat import set_checksum

# an emoji (a surrogate pair) as the 15th and 16th UTF-16 units: the pair spans two File Name entries
SPLIT = "a" * 14 + "\N{GRINNING FACE}.txt"
LONG = "b" * 29 + "\N{PILE OF POO}" + "c" * 20 + ".bin"  # the same at the 30th unit, in a 4-entry name


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools(*fsbuild.TOOLS["exfat"])
    need_root()
    path = tmp_path_factory.mktemp("exfattree") / "exfat.raw"
    fsbuild.random_image(path, 32)
    fsbuild._run("mkfs.exfat", "-L", "tree", path)
    with fsbuild.mounted(path, "exfat") as mnt:
        (mnt / SPLIT).write_bytes(b"split\n")
        (mnt / "dir").mkdir()
        (mnt / "dir" / LONG).write_bytes(b"long\n" * 1000)
        (mnt / "prealloc.bin").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes, then 300,000 in all:
        with open(mnt / "prealloc.bin", "r+b") as f:
            f.truncate(300_000)  # exfat-fuse writes the zeros (ValidDataLength = DataLength)
        (mnt / "zlast.txt").write_bytes(b"last\n")
    return path


def _sets(path: Path) -> dict[str, tuple[int, bytes]]:
    """Root entry sets by name: (volume offset of the File entry, the set's bytes)."""
    with FileSource(str(path)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        entries = list(exfat._Volume(src, boot).root_entries())
    out: dict[str, tuple[int, bytes]] = {}
    for i, (off, kind, raw) in enumerate(entries):
        if kind == 0x85:
            data = b"".join(r for _o, _k, r in entries[i : i + 1 + raw[1]])
            units = b"".join(data[p + 2 : p + 32] for p in range(64, len(data), 32) if data[p] == 0xC1)
            out[units[: 2 * data[35]].decode("utf-16-le")] = (off, data)
    return out


def _write_set(path: Path, off: int, data: bytearray) -> None:
    data[2:4] = set_checksum(bytes(data)).to_bytes(2, "little")
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _copy(volume: Path, tmp_path: Path) -> Path:
    vol = tmp_path / "vol.raw"
    vol.write_bytes(volume.read_bytes())
    return vol


def test_names_and_contents_are_what_the_driver_shows(volume: Path, tmp_path: Path) -> None:
    """Names with a surrogate pair across two entries list and extract (dissect's parser failed the whole
    volume on them); every file's bytes are those exfat-fuse reads."""
    proc = cli("ls", "-R", volume, "/")
    assert SPLIT in proc.stdout and LONG in proc.stdout
    out = tmp_path / "out"
    cli("extract", volume, "/", out)
    assert fsbuild.hash_dir(out) == fsbuild.read_files(volume, "exfat")


def test_past_valid_data_length_reads_as_zeros(volume: Path, tmp_path: Path) -> None:
    """A file extended without writing its new clusters (Windows, Linux's exfat): ValidDataLength is
    short of DataLength, and its clusters past it hold what they held before; they read as zeros."""
    vol = _copy(volume, tmp_path)
    off, data = _sets(vol)["prealloc.bin"]
    set_ = bytearray(data)
    flags, valid, first, size = struct.unpack_from("<B6xQ4xIQ", set_, 33)
    assert valid == size == 300_000
    struct.pack_into("<Q", set_, 40, 102_400)  # ValidDataLength
    _write_set(vol, off, set_)
    with FileSource(str(vol)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        assert flags & 0x02  # contiguous: the stale bytes go where the file's clusters are
        stale = boot.cluster_offset(first) + 102_400
    with open(vol, "r+b") as f:
        f.seek(stale)
        f.write(b"\xee" * (size - 102_400))
    cli("extract", vol, "/prealloc.bin", tmp_path / "got")
    want = bytes(range(256)) * 400 + bytes(size - 102_400)
    assert (tmp_path / "got" / "prealloc.bin").read_bytes() == want
    cli("extract", volume, "/prealloc.bin", tmp_path / "orig")  # the file as exfat-fuse wrote it: the same
    assert hashlib.sha256((tmp_path / "orig" / "prealloc.bin").read_bytes()).digest() == hashlib.sha256(want).digest()


def test_vendor_allocation_entry_is_not_part_of_the_name(volume: Path, tmp_path: Path) -> None:
    """A Vendor Allocation entry (0xE1) after the File Name entries: the name stays the name."""
    vol = _copy(volume, tmp_path)
    sets = _sets(vol)
    off, data = sets["zlast.txt"]
    end = off + len(data)  # zlast.txt is the root's last set: the end marker follows it
    vendor = bytes([0xE1, 0x01]) + bytes(range(16, 34)) + bytes(12)
    set_ = bytearray(data + vendor)
    set_[1] += 1
    with open(vol, "rb") as f:
        f.seek(end)
        assert f.read(32) == bytes(32)
    _write_set(vol, off, set_)
    names = cli("ls", vol, "/").stdout.split()
    assert "zlast.txt" in names and not [n for n in names if n.startswith("zlast.txt") and n != "zlast.txt"]
    cli("extract", vol, "/zlast.txt", tmp_path / "z")
    assert (tmp_path / "z" / "zlast.txt").read_bytes() == b"last\n"


@pytest.mark.parametrize("damage", ["checksum", "count"])
def test_a_damaged_entry_set_is_named_and_the_rest_listed(volume: Path, damage: str, tmp_path: Path) -> None:
    """A set failing its SetChecksum, or claiming more secondary entries than follow it: that file is
    listed as damaged and extract exits 3 naming it; the files after it are listed and extracted."""
    vol = _copy(volume, tmp_path)
    off, data = _sets(vol)["prealloc.bin"]
    set_ = bytearray(data)
    if damage == "checksum":
        set_[8] ^= 0xFF  # CreateTimestamp: the checksum no longer matches
        with open(vol, "r+b") as f:
            f.seek(off)
            f.write(set_)
    else:
        set_[1] = 40  # SecondaryCount: the next set's File entry cuts it short
        _write_set(vol, off, set_)
    proc = cli("ls", vol, "/", check=None)
    assert "zlast.txt" in proc.stdout and SPLIT in proc.stdout
    why = "fails its checksum" if damage == "checksum" else "ends after 2 of its 40 secondary entries"
    proc = cli("extract", vol, "/", tmp_path / "out", check=3)
    assert "prealloc.bin" in proc.stderr and why in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "zlast.txt").read_bytes() == b"last\n"
    assert not (tmp_path / "out" / "prealloc.bin").exists()


def test_an_unpaired_surrogate_is_escaped(volume: Path, tmp_path: Path) -> None:
    """A name holding half of a surrogate pair (damage, or a writer that cut a name short) lists and
    extracts with that unit escaped as ``%u`` and its hex digits (``%uD83D``), as FAT's long names do."""
    vol = _copy(volume, tmp_path)
    off, data = _sets(vol)[SPLIT]
    set_ = bytearray(data)
    low = 96 + 2  # the 16th unit, the low half of the pair: the first of the second name entry
    assert set_[low : low + 2] == "\N{GRINNING FACE}".encode("utf-16-le")[2:]
    set_[low : low + 2] = b"x\0"
    _write_set(vol, off, set_)
    want = "a" * 14 + "%uD83Dx.txt"
    assert want in cli("ls", vol, "/").stdout.split()
    cli("extract", vol, "/" + want, tmp_path / "out")
    assert (tmp_path / "out" / want).read_bytes() == b"split\n"


def test_a_directory_that_leads_back_to_the_root(volume: Path, tmp_path: Path) -> None:
    """A subdirectory whose stream points at the root's cluster: listed once, then named as a loop; the
    walk ends and everything else is extracted."""
    vol = _copy(volume, tmp_path)
    off, data = _sets(vol)["dir"]
    set_ = bytearray(data)
    with FileSource(str(vol)) as src:
        boot = exfat.probe(src)
        assert boot is not None
    struct.pack_into("<I", set_, 52, boot.root_cluster)  # FirstCluster
    struct.pack_into("<Q", set_, 56, boot.cluster_size)  # DataLength
    struct.pack_into("<Q", set_, 40, boot.cluster_size)  # ValidDataLength
    set_[33] |= 0x02  # NoFatChain
    _write_set(vol, off, set_)
    proc = cli("ls", "-R", vol, "/", check=None, timeout=60)
    assert proc.returncode in (0, 3) and SPLIT in proc.stdout
    proc = cli("extract", vol, "/", tmp_path / "out", check=3, timeout=60)
    assert "/dir" in proc.stderr and "loops back to a parent directory" in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "zlast.txt").read_bytes() == b"last\n"
