"""A FAT or exFAT volume that was not cleanly unmounted (``fat.volume_state``, ``exfat.volume_state``): its
FAT or Allocation Bitmap may miss clusters a file was given before it stopped, so used-only imaging refuses
it (auto images it in full), as partclone does, and file reading says so in one line.  The flags are set
as Linux, Windows and exfat-fuse set them; one exFAT copy is taken while exfat-fuse has it mounted."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools

MiB = 1 << 20


def _flip(path: Path, offset: int, fmt: str, set_bits: int = 0, clear_bits: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        value = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
        f.seek(offset)
        f.write(struct.pack(fmt, (value | set_bits) & ~clear_bits))


def _refused_and_read(path: Path, expected: dict[str, str], needle: str, tmp_path: Path) -> None:
    proc = cli("image", "--used-only", path, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert needle in cli("image", "--force", "--used-only=auto", path, tmp_path / "x.img").stderr
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    proc = cli("extract", path, "/", out)
    assert proc.stderr.count(needle) == 1 and proc.stderr.count("warning") == 1, proc.stderr
    assert fsbuild.hash_dir(out) == expected


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_marked_dirty_in_its_boot_sector(bits: int, tmp_path: Path) -> None:
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    expected = fsbuild.make_fat(vol, 40 if bits != 12 else 8, None, fat_bits=bits)
    cli("image", "--used-only", vol, tmp_path / "clean.img")  # as made: clean
    assert "warning" not in cli("ls", vol, "/").stderr
    _flip(vol, (0x41 if bits == 32 else 0x25), "<B", set_bits=0x01)  # BS_Reserved1, as Linux sets it
    _refused_and_read(vol, expected, "it is marked dirty", tmp_path)


@pytest.mark.parametrize(("bits", "flag", "needle"), [
    (16, 0x8000, "not cleanly shut down"), (16, 0x4000, "records a disk error"),
    (32, 0x08000000, "not cleanly shut down"), (32, 0x04000000, "records a disk error"),
])
def test_fat_whose_fat1_says_not_clean(bits: int, flag: int, needle: str, tmp_path: Path) -> None:
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    expected = fsbuild.make_fat(vol, 40, None, fat_bits=bits)
    with open(vol, "rb") as f:
        boot = f.read(512)
    fat = struct.unpack_from("<H", boot, 0x0E)[0] * struct.unpack_from("<H", boot, 0x0B)[0]  # reserved sectors
    _flip(vol, fat + bits // 8, "<H" if bits == 16 else "<I", clear_bits=flag)  # FAT[1], as Windows clears it
    _refused_and_read(vol, expected, needle, tmp_path)


def test_exfat_copied_while_mounted_and_media_failure(tmp_path: Path) -> None:
    need_root()
    need_tools(*fsbuild.TOOLS["exfat"], "losetup")
    vol = tmp_path / "exfat.raw"
    expected = fsbuild.make_exfat(vol, 40, None)
    cli("image", "--used-only", vol, tmp_path / "clean.img")  # unmounted by exfat-fuse: clean
    copy = tmp_path / "mounted.raw"
    dev = subprocess.run(["losetup", "--find", "--show", str(vol)], check=True, capture_output=True,
                         text=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount.exfat-fuse", dev, str(mnt)], check=True, capture_output=True)
        try:
            # what unplugging it now would leave: read through the device, whose page cache holds what
            # exfat-fuse wrote (the backing file sees it only once the loop device is flushed)
            shutil.copyfile(dev, copy)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    _refused_and_read(copy, expected, "it is marked dirty", tmp_path)
    _flip(vol, 0x6A, "<H", set_bits=0x0004)  # VolumeFlags.MediaFailure (outside the boot checksum)
    _refused_and_read(vol, expected, "records a media failure", tmp_path)
