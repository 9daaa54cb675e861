"""Volumes this program recognizes but does not map: an encrypted volume (LUKS made by cryptsetup, BitLocker),
a filesystem it does not read (F2FS, SquashFS made by their own tools; ReFS, APFS, HFS+), an MD RAID member.
Each is named in the one line that says why it is imaged in full, and in ``info``'s partition table."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import cli, need_tools
from imaging_utility.blocks import BytesSource
from imaging_utility.errors import EXIT_NOT_FOUND, UnsupportedError
from imaging_utility.filesystems import allocation_map, signatures

MiB = 1 << 20


def _luks(version: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        need_tools("cryptsetup")
        subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", f"--type=luks{version}", "--pbkdf=pbkdf2",
                        "--pbkdf-force-iterations=1000", str(path), "-"], input=b"passphrase", check=True,
                       capture_output=True, timeout=120)
    return make


def _f2fs(path: Path) -> None:
    need_tools("mkfs.f2fs")
    subprocess.run(["mkfs.f2fs", "-q", str(path)], check=True, capture_output=True)


def _squashfs(path: Path) -> None:
    need_tools("mksquashfs")
    path.unlink()
    subprocess.run(["mksquashfs", str(Path(__file__).parent), str(path), "-quiet", "-noappend"], check=True,
                   capture_output=True)


def _patch(at: int, data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(data)
    return make


VOLUMES = {  # name -> (maker, what the line says)
    "luks1": (_luks(1), "a LUKS1 encrypted volume (cryptsetup)"),
    "luks2": (_luks(2), "a LUKS2 encrypted volume (cryptsetup)"),
    "f2fs": (_f2fs, "an F2FS volume, a filesystem this program does not read"),
    "squashfs": (_squashfs, "a SquashFS image, a filesystem this program does not read"),
    "bitlocker": (_patch(0, b"\xebR\x90-FVE-FS-\x00\x02\x08"), "a BitLocker-encrypted volume ('-FVE-FS-' at offset 3)"),
    "refs": (_patch(0, b"\x00\x00\x00ReFS\x00\x00\x00\x00FSRS"), "a ReFS volume"),
    "apfs": (_patch(32, b"NXSB"), "an APFS container"),
    "hfsplus": (_patch(1024, b"H+\x00\x04"), "an HFS+ volume"),
    "md": (_patch(4096, (0xA92B4EFC).to_bytes(4, "little") + (1).to_bytes(4, "little")),
           "a Linux MD superblock 1.2 at offset 4096 is damaged"),  # whole ones: tests/linuxfs/test_md.py
}


@pytest.fixture
def volume(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        path = tmp_path / f"{name}.raw"
        path.write_bytes(bytes(64 * MiB))
        VOLUMES[name][0](path)
        return path
    return make


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_named_in_the_refusal(name: str, volume: Callable[[str], Path]) -> None:
    data = volume(name).read_bytes()
    assert signatures.identify(BytesSource(data)) is not None
    with pytest.raises(UnsupportedError) as exc:
        allocation_map(BytesSource(data))
    assert exc.value.exit_code == EXIT_NOT_FOUND
    assert VOLUMES[name][1] in str(exc.value)


def test_named_in_info_and_kept_in_full_on_a_disk(tmp_path: Path) -> None:
    need_tools("sgdisk", "cryptsetup")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(80 * MiB))
    subprocess.run(["sgdisk", "-n1:2048:+32M", "-n2:0:+32M", str(disk)], check=True, capture_output=True)
    part = tmp_path / "p2.raw"
    part.write_bytes(bytes(32 * MiB))
    _luks(2)(part)
    with open(disk, "r+b") as f:
        f.seek(2048 * 512)
        f.write(b"\xebR\x90-FVE-FS-")
        f.seek((2048 + 65536) * 512)
        f.write(part.read_bytes())
    out = cli("info", disk)
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "bitlocker (not mapped)" in rows["1"] and "luks (not mapped)" in rows["2"], out.stdout
    assert "partition 1 (bitlocker): a BitLocker-encrypted volume" in out.stdout + out.stderr
    assert "partition 2 (luks): a LUKS2 encrypted volume (cryptsetup)" in out.stdout + out.stderr
    assert "100.0%" in out.stdout  # both kept in full
    # plain --used-only on the encrypted partition is refused with that line, =auto images it in full
    proc = cli("image", "--used-only", "--offset", str((2048 + 65536) * 512), "--length", str(32 * MiB), disk,
               tmp_path / "p2.img", check=None)
    assert proc.returncode == EXIT_NOT_FOUND and "a LUKS2 encrypted volume" in proc.stderr, proc.stderr
