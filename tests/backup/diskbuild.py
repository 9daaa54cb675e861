"""Whole-disk fixtures: real partition tables (sgdisk, sfdisk) holding real filesystems (fsbuild).

Each filesystem is built in its own volume file by ``fsbuild`` (random bytes first, so free space is
garbage like on a used disk), then copied into its partition of a disk file that was itself filled with
random bytes, so the gap after the MBR, the gaps between partitions and the unformatted partitions hold
bytes a restore must reproduce.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import fsbuild

MiB = 1 << 20
SECTOR = 512


@dataclass
class Disk:
    path: Path
    size: int
    scheme: str
    # number -> (family for fsbuild.read_files/fsck or None, expected {file: sha256})
    filesystems: dict[int, tuple[str, dict[str, str]]] = field(default_factory=dict)
    raw: list[int] = field(default_factory=list)  # partitions of raw bytes that must come back identical
    swap: int | None = None
    gap: tuple[int, int] = (0, 0)  # (offset, length) of the random gap after the table


def _run(*cmd: str | Path, stdin: str | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def splice(disk: Path, offset: int, volume: Path) -> None:
    with open(disk, "r+b") as out, open(volume, "rb") as src:
        out.seek(offset)
        shutil.copyfileobj(src, out, MiB)


def _tree(work: Path, name: str) -> Path:
    files = work / f"tree-{name}"
    fsbuild.make_tree(files, seed=len(name), large_mib=1)
    return files


def sha256_range(path: Path | str, offset: int, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(MiB, left))
            if not block:
                raise AssertionError(f"{path} ends before byte {offset + length}")
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def make_gpt_disk(work: Path) -> Disk:
    """80 MiB GPT: 1 ESP FAT32, 2 NTFS, 3 ext4, 4 swap, 5 unformatted, 6 BIOS boot (random bytes);
    7 MiB free at the end (a 74 MiB target still holds every partition)."""
    path = work / "gpt-disk.raw"
    fsbuild.random_image(path, 80, seed=11)
    _run("sgdisk", "-U", "5c3c3b1e-1111-4222-8333-944455556666",
         "-n", "1:1M:+36M", "-t", "1:ef00", "-c", "1:EFI system partition",
         "-n", "2:0:+16M", "-t", "2:0700", "-c", "2:Windows data",
         "-n", "3:0:+12M", "-t", "3:8300", "-c", "3:linux root",
         "-n", "4:0:+4M", "-t", "4:8200", "-c", "4:swap",
         "-n", "5:0:+3M", "-t", "5:8300", "-c", "5:unformatted",
         "-n", "6:0:+1M", "-t", "6:ef02", "-c", "6:BIOS boot",
         "-A", "2:set:63", path)
    disk = Disk(path, 80 * MiB, "gpt", gap=(34 * SECTOR, (2048 - 34) * SECTOR))
    starts = {n: 1 * MiB + sum((0, 36, 16, 12, 4, 3)[:n]) * MiB for n in range(1, 7)}
    vol = work / "vol.raw"
    expected = fsbuild.make_fat(vol, 36, _tree(work, "esp"), 32, ("-s", "1"))
    splice(path, starts[1], vol)
    disk.filesystems[1] = ("fat", expected)
    expected = fsbuild.make_ntfs(vol, 16, _tree(work, "ntfs"))
    splice(path, starts[2], vol)
    disk.filesystems[2] = ("ntfs", expected)
    expected = fsbuild.make_ext(vol, 12, _tree(work, "ext"))
    splice(path, starts[3], vol)
    disk.filesystems[3] = ("ext", expected)
    fsbuild.random_image(vol, 4, seed=12)
    _run("mkswap", "-L", "testswap", "-U", "0badc0de-1234-4321-8765-0123456789ab", vol)
    splice(path, starts[4], vol)
    disk.swap = 4
    disk.raw = [5, 6]
    vol.unlink()
    return disk


def make_mbr_disk(work: Path) -> Disk:
    """64 MiB MBR: 1 primary ext4 (bootable), 2 extended holding 5 FAT16 and 6 NTFS; random gap after the
    MBR; 11 MiB free at the end."""
    path = work / "mbr-disk.raw"
    fsbuild.random_image(path, 64, seed=13)
    n = path.name
    _run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--wipe", "never", path, stdin=(
        "label: dos\nlabel-id: 0x1234abcd\n"
        f"{n}1 : start=2048, size=16MiB, type=83, bootable\n"
        f"{n}2 : size=36MiB, type=5\n"
        f"{n}5 : size=16MiB, type=6\n"
        f"{n}6 : type=7\n"))
    disk = Disk(path, 64 * MiB, "mbr", gap=(SECTOR, 2047 * SECTOR))
    table = {int(p["node"].rsplit("raw", 1)[1]): p for p in _sfdisk_json(path)["partitions"]}
    vol = work / "vol.raw"
    for number, family in ((1, "ext"), (5, "fat"), (6, "ntfs")):
        size_mib = table[number]["size"] * SECTOR // MiB
        if family == "ext":
            expected = fsbuild.make_ext(vol, size_mib, _tree(work, f"m{number}"))
        elif family == "fat":
            expected = fsbuild.make_fat(vol, size_mib, _tree(work, f"m{number}"), 16)
        else:
            expected = fsbuild.make_ntfs(vol, size_mib, _tree(work, f"m{number}"))
        splice(path, table[number]["start"] * SECTOR, vol)
        disk.filesystems[number] = (family, expected)
    vol.unlink()
    return disk


def _sfdisk_json(path: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(_run("sfdisk", "-J", path))["partitiontable"]  # type: ignore[no-any-return]


def sfdisk_dump(dev: str | Path, drop: tuple[str, ...] = ("last-lba",)) -> list[str]:
    """``sfdisk -d`` without the device names and the given header fields."""
    out = []
    for line in _run("sfdisk", "-d", dev).splitlines():
        if any(line.startswith(f"{key}:") for key in drop) or line.startswith("device:"):
            continue
        if " : " in line:
            line = line.split(" : ", 1)[1]
        out.append(line)
    return out


def sgdisk_ok(dev: str | Path) -> str:
    out = _run("sgdisk", "-v", dev)
    assert "No problems found" in out, out
    return out


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_simple_disk(work: Path, name: str = "simple.raw") -> Disk:
    """24 MiB GPT without root: 1 FAT16 (1..9 MiB), 2 ext4 (9..17 MiB), 3 random bytes (17..19 MiB)."""
    path = work / name
    fsbuild.random_image(path, 24, seed=21)
    _run("sgdisk", "-U", "0d15c0de-2222-4333-8444-955566667777", "-n", "1:1M:+8M", "-t", "1:0700",
         "-n", "2:0:+8M", "-t", "2:8300", "-n", "3:0:+2M", "-t", "3:8300", path)
    disk = Disk(path, 24 * MiB, "gpt", gap=(34 * SECTOR, (2048 - 34) * SECTOR), raw=[3])
    vol = work / f"{name}.vol"
    disk.filesystems[1] = ("fat", fsbuild.make_fat(vol, 8, None, 16, ("-s", "1")))
    splice(path, 1 * MiB, vol)
    disk.filesystems[2] = ("ext", fsbuild.make_ext(vol, 8, None))
    splice(path, 9 * MiB, vol)
    vol.unlink()
    return disk
