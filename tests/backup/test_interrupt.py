"""kill -9 during backup-disk, then --resume: the same images as an uninterrupted run.  kill -9 during a disk
restore, then the same restore again: the same disk as a restore that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backup.backuphelpers import BackupSet, blank_target, manifest, sha256_dev
from conftest import cli
from imagetools import data_frames
from imaging_utility.image.reader import open_image

TOOL = [sys.executable, "-m", "imaging_utility"]


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _status(set_dir: Path) -> list[str]:
    try:
        return [d["status"] for d in manifest(set_dir)["disks"]]
    except (OSError, json.JSONDecodeError):
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def test_backup_killed_then_resumed(backup_set: BackupSet, tmp_path: Path) -> None:
    devices = [backup_set.devices["gpt"], backup_set.devices["mbr"]]
    names = [backup_set.names["gpt"], backup_set.names["mbr"]]
    set_dir = tmp_path / "set"
    slow = ["--max-throughput", "8M", *devices, str(set_dir)]
    # killed while the first disk is in progress, then while the second one is
    for stage, (index, state) in enumerate([(0, ["in progress", "pending"]), (1, ["complete", "in progress"])]):
        proc = subprocess.Popen([*TOOL, "backup-disk", *(["--resume"] if stage else []), *slow],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        image = set_dir / f"{names[index]}.img.zst"

        def half_done(state: list[str] = state, image: Path = image) -> bool:
            return _status(set_dir) == state and _size(image) > 4 << 20

        _wait(f"disk {index} half done", half_done, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = json.loads(cli("backup-disk", "--resume", "--json", *devices, set_dir).stdout)
    assert [d["kept_from_earlier_run"] for d in out["disks"]] == [True, False]
    for name in names:
        resumed, reference = set_dir / f"{name}.img.zst", backup_set.path / f"{name}.img.zst"
        assert data_frames(resumed) == data_frames(reference)
        with open_image(str(resumed)) as a, open_image(str(reference)) as b:
            assert a.trailer and b.trailer
            assert a.trailer.meta["digests"] == b.trailer.meta["digests"]
            assert a.trailer.meta["partition_digests"] == b.trailer.meta["partition_digests"]
    assert _status(set_dir) == ["complete", "complete"]
    cli("verify", set_dir)


def test_restore_killed_then_run_again(backup_set: BackupSet, tmp_path: Path, loops: object) -> None:
    size = backup_set.disks["gpt"].size + (8 << 20)
    args = ["restore", "--yes", "--set-dir", str(backup_set.path), "--disk", backup_set.names["gpt"]]
    clean = loops(blank_target(tmp_path, size, "clean.raw"))  # type: ignore[operator]
    cli(*args, clean)
    killed = loops(blank_target(tmp_path, size, "killed.raw"))  # type: ignore[operator]
    proc = subprocess.Popen([*TOOL, *args, "--max-throughput", "4M", killed], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    with open(killed, "rb") as dev:  # wait until the first chunks (the table among them) are on the disk

        def started() -> bool:
            os.posix_fadvise(dev.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return os.pread(dev.fileno(), 8, 512) == b"EFI PART"

        _wait("the restore to begin", started, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sha256_dev(killed) != sha256_dev(clean)  # it really was cut short
    cli(*args, killed)  # not refused: the table on the target is the image's own
    assert sha256_dev(killed) == sha256_dev(clean)
