"""An MBR counts sectors without naming their size: a copy of a 4Kn disk (or of a USB disk whose bridge
presents 4096-byte sectors) in a file is read at 4096 when its partitions hold volumes only there, checked
against ``partx`` on a loop device of 4096-byte sectors; a 512-byte disk stays 512."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import fsbuild
from conftest import cli, need_root, need_tools
from imagetools import used_only_round_trip
from imaging_utility.blocks import BytesSource, check_range
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import SourceIOError
from imaging_utility.partitions import read_partitions

MiB = 1 << 20


def _mbr(entries: list[tuple[int, int, int]], size: int, seed: int = 1) -> bytearray:
    """``size`` random bytes with an MBR of ``entries`` (type, first LBA, sectors)."""
    disk = bytearray(random.Random(seed).randbytes(size))
    disk[446:512] = bytes(66)
    for i, (ptype, lba, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", disk, 446 + 16 * i, 0, b"", ptype, b"", lba, count)
    disk[510:512] = b"\x55\xaa"
    return disk


def _ext_magic(disk: bytearray, at: int) -> None:
    """An ext2/3/4 superblock's magic and a block size it can have, at volume offset ``at``."""
    struct.pack_into("<I", disk, at + 1048, 2)
    struct.pack_into("<H", disk, at + 1080, 0xEF53)


def test_4kn_mbr_disk_copied_to_a_file(tmp_path: Path) -> None:
    """ext4 and NTFS partitions of a 4Kn MBR disk, laid out by sfdisk on a 4096-byte loop device: the file
    shows them where partx does, with their filesystems, and images them used-only.  The code before read
    the table at 512: partitions at an eighth of their places, nothing found, the disk kept whole."""
    need_root()
    need_tools("sfdisk", "partx", "losetup", "mkntfs", "debugfs", "e2fsck")
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 96, 51)
    dev = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", str(disk)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        subprocess.run(["sfdisk", "-q", dev], input=b"label: dos\nstart=256, size=8192, type=83\n"
                       b"start=8448, size=14080, type=7\n", check=True, capture_output=True)
        shown = subprocess.run(["partx", "--raw", "--noheadings", "-o", "NR,START,SECTORS", dev],
                               capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    want = {int(n): (int(s) * 512, int(c) * 512) for n, s, c in zip(shown[::3], shown[1::3], shown[2::3],
                                                                        strict=True)}
    assert want == {1: (MiB, 32 * MiB), 2: (33 * MiB, 55 * MiB)}, want  # partx counts 512-byte units
    ext, ntfs = tmp_path / "p1.raw", tmp_path / "p2.raw"
    files = {"p1": fsbuild.make_ext(ext, 32, None, seed=52), "p2": fsbuild.make_ntfs(ntfs, 55, None, seed=53)}
    with open(disk, "r+b") as f:
        for path, (start, _length) in zip((ext, ntfs), want.values(), strict=True):
            f.seek(start)
            f.write(path.read_bytes())
    with FileSource(str(disk)) as source:
        table = read_partitions(source)
        assert (table.sector_size, {p.number: (p.offset, p.length) for p in table.partitions}) == (4096, want)
    shown_info = cli("info", disk).stdout
    assert "sector 4096" in shown_info and "ext4" in shown_info and "ntfs" in shown_info, shown_info
    used, original, restored = used_only_round_trip(disk, tmp_path)
    assert used < 40 * MiB
    assert restored[: MiB] == original[: MiB]
    for (name, kind), (start, length) in zip((("p1", "ext"), ("p2", "ntfs")), want.values(), strict=True):
        back = tmp_path / f"back-{name}.raw"
        back.write_bytes(restored[start : start + length])
        assert fsbuild.fsck(back, kind).returncode == 0
        streams = tuple(k for k in files[name] if ":" in k)  # NTFS's named streams
        assert fsbuild.read_files(back, kind, streams) == files[name]
    listed = cli("ls", "--partition", "2", disk, "/").stdout
    assert listed.strip(), listed


def test_512_byte_disk_stays_512() -> None:
    """Partitions with nothing recognizable at their starts stay 512 even with an ext4 signature at eight times
    an offset, when the partitions would not fit at 4096; and with one recognizable at 512 whatever else."""
    size = 64 * MiB
    disk = _mbr([(0x83, 2048, 126976)], size)  # to the disk's end: at 4096 it would reach 8× past it
    struct.pack_into("<H", disk, 2048 * 4096 + 1080, 0xEF53)
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    disk = _mbr([(0x83, 2048, 4096), (0x07, 8192, 4096)], size)  # both would fit at 4096 …
    _ext_magic(disk, 2048 * 4096)  # … where the first looks like ext4 …
    disk[8192 * 512 : 8192 * 512 + 512] = b"\xeb\x52\x90NTFS    " + bytes(499) + b"\x55\xaa"  # an NTFS at 512
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    disk[8192 * 512 : 8192 * 512 + 512] = bytes(512)  # without it, the disk is read as 4Kn
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 4096
    struct.pack_into("<I", disk, 2048 * 4096 + 1048, 0xFFFF)  # a block size no ext has: two bytes by chance
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    struct.pack_into("<I", disk, 2048 * 4096 + 1048, 2)
    assert read_partitions(BytesSource(bytes(disk), 4096)).sector_size == 4096
    assert read_partitions(BytesSource(bytes(disk[: size - 512]))).sector_size == 512  # not a 4Kn size
    disk = _mbr([(0x05, 256, 8192)], size)  # only logical partitions: their first EBR decides
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    ebr = bytearray(512)
    struct.pack_into("<B3sB3sII", ebr, 446, 0, b"", 0x83, b"", 256, 4096)
    ebr[510:512] = b"\x55\xaa"
    disk[256 * 4096 : 256 * 4096 + 512] = ebr
    table = read_partitions(BytesSource(bytes(disk)))
    assert table.sector_size == 4096 and [(p.number, p.offset) for p in table.partitions] == [(5, 512 * 4096)]
    disk[256 * 512 : 256 * 512 + 512] = ebr
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    disk = _mbr([(0x42, 256, 8192)], size)  # a dynamic disk whose first volume is not at its partition's start
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512
    disk[6 * 4096 : 6 * 4096 + 8] = b"PRIVHEAD"
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 4096
    disk[6 * 512 : 6 * 512 + 8] = b"PRIVHEAD"
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 512


class _Unreadable(BytesSource):
    def __init__(self, data: bytes, bad: range) -> None:
        super().__init__(data)
        self.bad = bad

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self.size, offset, len(buf))
        if offset < self.bad.stop and offset + len(buf) > self.bad.start:
            raise SourceIOError(f"unreadable at {offset}", offset=offset)
        super().readinto_at(offset, buf)


def test_unreadable_partition_start_does_not_stop_the_table() -> None:
    """A failing disk whose partition starts cannot be read: the table is still read (at 512), the bad
    sectors left for the rescue to name."""
    disk = _mbr([(0x83, 2048, 4096)], 64 * MiB)
    table = read_partitions(_Unreadable(bytes(disk), range(2048 * 512, 2048 * 512 + 4096)))
    assert table.sector_size == 512 and [(p.offset, p.length) for p in table.partitions] == [(MiB, 2 * MiB)]
    bad_4k = range(2048 * 4096, 2048 * 4096 + 4096)
    _ext_magic(disk, 2048 * 4096)  # an ext4 there, but unreadable
    assert read_partitions(BytesSource(bytes(disk))).sector_size == 4096
    assert read_partitions(_Unreadable(bytes(disk), bad_4k)).sector_size == 512
