"""WSL special files and POSIX fields on NTFS: FIFOs, sockets and devices that WSL (and ntfs-3g with
``special_files=wsl``) stores as ``IO_REPARSE_TAG_LX_*`` reparse points, and the ``$LXUID``/``$LXGID``/
``$LXMOD``/``$LXDEV`` extended attributes, are listed and extracted as the special files, owners and
modes they are; a damaged EA chain gives what came before the damage, never a crash."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root
from files.filehelpers import need
from imaging_utility.filesystems.ntfs_links import lx_fields


def _ea(*entries: tuple[bytes, bytes]) -> bytes:
    """FILE_FULL_EA_INFORMATION entries, each padded to 4 bytes, the last with next offset 0."""
    out = b""
    for i, (name, value) in enumerate(entries):
        body = struct.pack("<BBH", 0, len(name), len(value)) + name + b"\0" + value
        size = 4 + len(body) + (-(4 + len(body)) % 4)
        out += struct.pack("<I", 0 if i == len(entries) - 1 else size) + body.ljust(size - 4, b"\0")
    return out


def test_lx_fields_and_damaged_chains() -> None:
    good = _ea((b"$LXUID", struct.pack("<I", 1000)), (b"$LXGID", struct.pack("<I", 1001)),
               (b"$LXMOD", struct.pack("<I", 0o100750)), (b"$LXDEV", struct.pack("<II", 8, 17)))
    assert lx_fields(good) == {"uid": 1000, "gid": 1001, "mode": 0o100750, "rdev": os.makedev(8, 17)}
    assert lx_fields(_ea((b"$KERNEL.PURGE.ESBCACHE", b"x" * 40), (b"$LXUID", struct.pack("<I", 7)))) == {"uid": 7}
    cut = good[:30]  # the second entry cut short: the first is kept
    assert lx_fields(cut) == {"uid": 1000}
    looping = bytearray(good)
    struct.pack_into("<I", looping, 0, 0)  # next offset 0 on the first entry: the chain ends there
    assert lx_fields(bytes(looping)) == {"uid": 1000}
    struct.pack_into("<I", looping, 0, 3)  # an offset inside the entry itself: the walk stops, no loop
    assert lx_fields(bytes(looping)) == {"uid": 1000}
    huge = bytearray(good)
    struct.pack_into("<H", huge, 6, 0xFFFF)  # a value longer than the EA set
    assert lx_fields(bytes(huge)) == {}
    short = _ea((b"$LXDEV", b"\1\0\0\0"))  # a device number cut to 4 bytes is none
    assert lx_fields(short) == {}
    assert lx_fields(b"") == {} and lx_fields(b"\xff" * 7) == {}


@pytest.fixture
def wsl_volume(tmp_path: Path) -> Path:
    """An NTFS volume whose special files ntfs-3g wrote as WSL does; one FIFO's $LXMOD turned into $LXUID
    (same length, in place: ntfs-3g writes no owner fields, and takes no $LX* EA from a user), another's
    permission bits changed in place."""
    need("ntfs")
    vol = tmp_path / "wsl.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "wsl", vol)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fsbuild._run("ntfs-3g", "-o", "rw,special_files=wsl", vol, mnt)
    try:
        os.mkfifo(mnt / "fifo", 0o640)
        os.mkfifo(mnt / "owned")
        os.mknod(mnt / "tty", stat.S_IFCHR | 0o620, os.makedev(4, 5))
        os.mknod(mnt / "disk", stat.S_IFBLK | 0o660, os.makedev(8, 1))
        os.mknod(mnt / "sock", stat.S_IFSOCK | 0o755)
        os.symlink("fifo", mnt / "link")
        (mnt / "plain.txt").write_bytes(b"plain\n")
    finally:
        fsbuild._run("umount", mnt)
    raw = bytearray(vol.read_bytes())
    fifo, owned = _lxmod_of(raw, "fifo"), _lxmod_of(raw, "owned")
    struct.pack_into("<I", raw, fifo + 7, stat.S_IFIFO | 0o640)  # ntfs-3g stores 0644 whatever was asked
    raw[owned : owned + 11] = b"$LXUID\0" + struct.pack("<I", 1234)
    vol.write_bytes(raw)
    return vol


def _lxmod_of(raw: bytearray, name: str) -> int:
    """Where the ``$LXMOD`` EA name lies in the MFT record whose $FILE_NAME is ``name``."""
    utf16 = name.encode("utf-16-le")
    at = raw.find(utf16)
    while at != -1:
        record = at // 1024 * 1024
        if raw[record : record + 4] == b"FILE" and (mod := raw.find(b"$LXMOD\0", record, record + 1024)) != -1:
            return mod
        at = raw.find(utf16, at + 1)
    raise AssertionError(f"no record of {name} with $LXMOD")


def test_wsl_special_files_listed_and_extracted(wsl_volume: Path, tmp_path: Path) -> None:
    listed = {e["name"]: e for e in json.loads(cli("ls", "-l", "--json", wsl_volume, "/").stdout)}
    assert listed["fifo"]["type"] == "fifo" and listed["fifo"]["mode"] == 0o640, listed["fifo"]
    assert listed["tty"]["type"] == "char" and listed["tty"]["rdev"] == [4, 5], listed["tty"]
    assert listed["disk"]["type"] == "block" and listed["disk"]["rdev"] == [8, 1], listed["disk"]
    assert listed["sock"]["type"] == "socket"
    assert listed["owned"]["type"] == "fifo" and listed["owned"]["uid"] == 1234 and "mode" not in listed["owned"]
    assert listed["link"]["type"] == "symlink" and listed["plain.txt"]["type"] == "file"
    need_root()
    img = tmp_path / "wsl.img"
    cli("image", "--used-only", wsl_volume, img)
    out = tmp_path / "out"
    cli("extract", img, "/", out)
    st = {name: os.lstat(out / name) for name in ("fifo", "owned", "tty", "disk", "sock")}
    assert stat.S_ISFIFO(st["fifo"].st_mode) and stat.S_IMODE(st["fifo"].st_mode) == 0o640
    assert stat.S_ISCHR(st["tty"].st_mode) and st["tty"].st_rdev == os.makedev(4, 5)
    assert stat.S_IMODE(st["tty"].st_mode) == 0o644  # as ntfs-3g stored it in $LXMOD
    assert stat.S_ISBLK(st["disk"].st_mode) and st["disk"].st_rdev == os.makedev(8, 1)
    assert stat.S_ISSOCK(st["sock"].st_mode)
    assert stat.S_ISFIFO(st["owned"].st_mode) and st["owned"].st_uid == 1234
    assert (out / "plain.txt").read_bytes() == b"plain\n"
