"""backup-disk of real GPT and MBR disks on loop devices, restored onto loop devices of the same, a larger and
a smaller size: sgdisk -v, sfdisk -d, every filesystem's fsck, every file, the raw gaps and partitions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import fsbuild
from backup.backuphelpers import BackupSet, blank_target, manifest
from backup.diskbuild import Disk, MiB, make_simple_disk, sfdisk_dump, sgdisk_ok, sha256_range
from conftest import cli

CASES = [("gpt", 0), ("gpt", 16 * MiB), ("gpt", -6 * MiB), ("mbr", 0), ("mbr", 16 * MiB), ("mbr", -8 * MiB)]


def _partitions(bset: BackupSet, kind: str) -> dict[int, tuple[int, int]]:
    entry = next(d for d in manifest(bset.path)["disks"] if d["name"] == bset.names[kind])
    return {p["number"]: (p["start"], p["length"]) for p in entry["partitions"]}


def check_restored(bset: BackupSet, kind: str, target: str) -> None:
    disk: Disk = bset.disks[kind]
    source = bset.devices[kind]
    if disk.scheme == "gpt":
        sgdisk_ok(target)
    assert sfdisk_dump(target) == sfdisk_dump(source)  # equal but for the GPT's last usable LBA
    parts = _partitions(bset, kind)
    for number, (family, expected) in disk.filesystems.items():
        node = f"{target}p{number}"
        assert Path(node).exists(), f"the kernel does not show partition {number} of {target}"
        check = fsbuild.fsck(Path(node), family)
        assert check.returncode == 0, f"fsck of partition {number}: {check.stdout}{check.stderr}"
        streams = tuple(k for k in expected if ":" in k)
        assert fsbuild.read_files(Path(node), family, streams) == expected, f"files of partition {number}"
    if disk.scheme == "mbr":  # the extended container, as Linux lists it: a 1 KiB stub
        name = Path(target).name
        assert Path(f"/sys/class/block/{name}p2/size").read_text().strip() == "2"
    for number in disk.raw:
        start, length = parts[number]
        assert sha256_range(target, start, length) == sha256_range(disk.path, start, length), f"partition {number}"
    gap_start, gap_len = disk.gap
    assert sha256_range(target, gap_start, gap_len) == sha256_range(disk.path, gap_start, gap_len)
    if disk.swap is not None:
        start, _length = parts[disk.swap]
        assert sha256_range(target, start, 4096) == sha256_range(disk.path, start, 4096)
        blkid = subprocess.run(["blkid", "-p", "-o", "export", f"{target}p{disk.swap}"], capture_output=True,
                               text=True).stdout
        assert "TYPE=swap" in blkid and "LABEL=testswap" in blkid, blkid


@pytest.mark.parametrize(("kind", "delta"), CASES, ids=[f"{k}{d // MiB:+d}M" for k, d in CASES])
def test_restore_same_larger_smaller(backup_set: BackupSet, kind: str, delta: int, tmp_path: Path,
                                     loops: object) -> None:
    target = loops(blank_target(tmp_path, backup_set.disks[kind].size + delta))  # type: ignore[operator]
    smaller = ["--allow-smaller"] if delta < 0 else []
    out = cli("restore", "--yes", "--verify", *smaller, "--set-dir", backup_set.path, "--disk",
              backup_set.names[kind], target)
    assert "ok" in out.stdout and "Traceback" not in out.stderr
    check_restored(backup_set, kind, target)


def test_restore_one_partition(backup_set: BackupSet, tmp_path: Path, loops: object) -> None:
    """--partition N onto an existing partition of the same size, onto a larger one (the filesystem keeps its
    size), and into a file; a smaller partition is refused and left unchanged."""
    disk = backup_set.disks["mbr"]
    name = backup_set.names["mbr"]
    parts = _partitions(backup_set, "mbr")
    for number, size in ((6, parts[6][1]), (1, parts[1][1] + 8 * MiB)):
        family, expected = disk.filesystems[number]
        target = loops(blank_target(tmp_path, size, f"p{number}.raw"))  # type: ignore[operator]
        cli("restore", "--yes", "--verify", "--set-dir", backup_set.path, "--disk", name, "--partition",
            str(number), target)
        check = fsbuild.fsck(Path(target), family)
        assert check.returncode == 0, check.stdout
        assert fsbuild.read_files(Path(target), family, tuple(k for k in expected if ":" in k)) == expected
    out = tmp_path / "p5-file.raw"
    cli("restore", "--set-dir", backup_set.path, "--disk", name, "--partition", "5", out)
    assert out.stat().st_size == parts[5][1]
    assert fsbuild.fsck(out, "fat").returncode == 0
    assert fsbuild.read_files(out, "fat") == disk.filesystems[5][1]
    small = loops(blank_target(tmp_path, 8 * MiB, "small.raw"))  # type: ignore[operator]
    before = sha256_range(small, 0, 8 * MiB)
    err = cli("restore", "--yes", "--set-dir", backup_set.path, "--disk", name, "--partition", "6", small,
              check=9).stderr
    assert "smaller than the partition" in err and err.count("\n") == 1
    assert sha256_range(small, 0, 8 * MiB) == before


def _without_ids(lines: list[str]) -> list[str]:
    return [re.sub(r"uuid=[0-9A-F-]+, ", "", line) for line in lines if not line.startswith("label-id:")]


@pytest.mark.parametrize("kind", ["gpt", "mbr"])
def test_new_ids_for_a_clone(backup_set: BackupSet, kind: str, tmp_path: Path, loops: object) -> None:
    disk = backup_set.disks[kind]
    target = loops(blank_target(tmp_path, disk.size))  # type: ignore[operator]
    cli("restore", "--yes", "--new-ids", "--verify", "--set-dir", backup_set.path, "--disk", backup_set.names[kind],
        target)
    if kind == "gpt":
        sgdisk_ok(target)
    before, after = sfdisk_dump(backup_set.devices[kind]), sfdisk_dump(target)
    assert _without_ids(after) == _without_ids(before)
    assert [x for x in after if x.startswith("label-id:")] != [x for x in before if x.startswith("label-id:")]
    number = 3 if kind == "gpt" else 1
    assert fsbuild.fsck(Path(f"{target}p{number}"), "ext").returncode == 0


def test_damaged_primary_gpt_comes_back_whole(tmp_path: Path, loops: object) -> None:
    disk = make_simple_disk(tmp_path)
    with open(disk.path, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff")  # the primary header's CRC fails; the backup at the disk's end is intact
    cli("backup-disk", disk.path, tmp_path / "set")
    target = loops(blank_target(tmp_path, disk.size + 4 * MiB))  # type: ignore[operator]
    cli("restore", "--yes", "--verify", tmp_path / "set", target)
    sgdisk_ok(target)
    for number, (family, expected) in disk.filesystems.items():
        assert fsbuild.read_files(Path(f"{target}p{number}"), family) == expected
