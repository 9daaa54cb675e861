"""Every restore refusal is one line, exit 9, and leaves the target's SHA-256 unchanged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backup.backuphelpers import BackupSet, blank_target, sha256_dev
from backup.diskbuild import MiB, splice
from conftest import cli, need_tools

FOREIGN_GUID = "aaaaaaaa-1111-4222-8333-bbbbbbbbbbbb"


def _foreign_disk(path: Path, size: int) -> None:
    """Another disk: a GPT with an ext4 partition and a swap partition."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sgdisk", "-U", FOREIGN_GUID, "-n", "1:1M:+20M", "-t", "1:8300", "-n", "2:0:+4M",
                    "-t", "2:8200", str(path)], check=True, capture_output=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "other", "-E", "offset=1048576", str(path), "20M"],
                   check=True, capture_output=True)
    swap = path.with_suffix(".swap")
    with open(swap, "wb") as f:
        f.truncate(4 * MiB)
    subprocess.run(["mkswap", "-L", "otherswap", str(swap)], check=True, capture_output=True)
    splice(path, 21 * MiB, swap)
    swap.unlink()


def _refused(args: list[object], target: str, needle: str, code: int = 9) -> None:
    before = sha256_dev(target)
    err = cli(*args, check=code, input=b"").stderr
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert sha256_dev(target) == before


def test_refusals_leave_the_target_unchanged(backup_set: BackupSet, tmp_path: Path, loops: object) -> None:
    need_tools("mount", "umount", "swapon", "swapoff", "mkswap", "mke2fs")
    gpt = ["--set-dir", backup_set.path, "--disk", backup_set.names["gpt"]]
    size = backup_set.disks["gpt"].size
    path = tmp_path / "foreign.raw"
    _foreign_disk(path, size)
    target = loops(path)  # type: ignore[operator]
    subprocess.run(["partx", "-a", target], check=True)
    # another disk's table, without --force
    _refused(["restore", "--yes", *gpt, target], target, f"holds a GPT table of another disk ({FOREIGN_GUID})")
    # no terminal and no --yes (with --force, so the question is the only thing left)
    _refused(["restore", "--force", *gpt, target], target, "without confirmation (no terminal); add --yes")
    # a mounted partition
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", f"{target}p1", mnt], check=True)
    try:
        _refused(["restore", "--yes", "--force", *gpt, target], target, f"is mounted read-only at {mnt}")
    finally:
        subprocess.run(["umount", mnt], check=True)
    # active swap on a partition
    subprocess.run(["swapon", f"{target}p2"], check=True)
    try:
        _refused(["restore", "--yes", "--force", *gpt, target], target, "is active swap")
    finally:
        subprocess.run(["swapoff", f"{target}p2"], check=True)
    # held open exclusively by another program
    fd = os.open(target, os.O_RDONLY | os.O_EXCL)
    try:
        _refused(["restore", "--yes", "--force", *gpt, target], target, "is busy")
    finally:
        os.close(fd)
    # one partition of the image onto a partition that is too small
    _refused(["restore", "--yes", *gpt, "--partition", "1", f"{target}p2"], target, "smaller than the partition")


@pytest.mark.parametrize(("kind", "size", "extra", "needle"), [
    ("gpt", 74 * MiB, [], "every partition fits: add --allow-smaller"),
    ("gpt", 72 * MiB, ["--allow-smaller"], "is too small for the image's partitions"),
    ("mbr", 50 * MiB, ["--allow-smaller"], "partition 6 ends at byte"),
    ("gpt", 96 * MiB, ["--sector-size-4096"], "4096-byte sectors, the image's disk had 512"),
])
def test_size_refusals(backup_set: BackupSet, tmp_path: Path, loops: object, kind: str, size: int,
                       extra: list[str], needle: str) -> None:
    sector = 4096 if "--sector-size-4096" in extra else 512
    extra = [e for e in extra if e != "--sector-size-4096"]
    path = blank_target(tmp_path, size)
    with open(path, "r+b") as f:  # not blank: the refusal must not come from a zero check
        f.write(os.urandom(MiB))
    target = loops(path, sector_size=sector)  # type: ignore[operator]
    _refused(["restore", "--yes", *extra, "--set-dir", backup_set.path, "--disk", backup_set.names[kind], target],
             target, needle)


def _typed(args: list[object], answer: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a terminal as stdin and type ``answer`` at its question."""
    import pty
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", *map(str, args)], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(master)
        os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_device_name_must_be_typed(backup_set: BackupSet, tmp_path: Path, loops: object) -> None:
    target = loops(blank_target(tmp_path, backup_set.disks["mbr"].size))  # type: ignore[operator]
    args = ["restore", "--set-dir", backup_set.path, "--disk", backup_set.names["mbr"], target]
    before = sha256_dev(target)
    wrong = _typed(args, "yes")
    assert wrong.returncode == 9 and "not confirmed ('yes' is not" in wrong.stderr
    assert "holds now:" in wrong.stderr and "will be written with" in wrong.stderr
    assert sha256_dev(target) == before
    right = _typed(args, Path(target).name)
    assert right.returncode == 0, right.stderr
    assert sha256_dev(target) != before
