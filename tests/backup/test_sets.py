"""A backup set everywhere an image goes: serve-proxy exports each partition, ls/extract/webdav/mount read the
right filesystem, info shows the table, verify checks every disk and one partition."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import fsbuild
from backup.backuphelpers import BackupSet, manifest
from conftest import cli, need_tools


def _serving(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" at (\S+) ", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return match.group(1)


def test_serve_proxy_exports_each_partition_of_a_set(backup_set: BackupSet, tmp_path: Path) -> None:
    need_tools("nbdinfo", "nbdcopy")
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", "--set-dir", str(backup_set.path),
                             "--disk", backup_set.names["gpt"], "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        uri = _serving(proc)
        listing = subprocess.run(["nbdinfo", "--list", uri], capture_output=True, text=True, check=True).stdout
        assert all(f'export="{n}"' in listing for n in ("", "p1", "p2", "p3", "p4", "p5", "p6"))
        subprocess.run(["nbdcopy", uri + "p3", tmp_path / "p3.raw"], check=True)
        family, expected = backup_set.disks["gpt"].filesystems[3]
        assert fsbuild.fsck(tmp_path / "p3.raw", family).returncode == 0
        assert fsbuild.read_files(tmp_path / "p3.raw", family) == expected
    finally:
        proc.terminate()
        proc.wait(20)


def test_ls_extract_info_verify_on_a_set(backup_set: BackupSet, tmp_path: Path) -> None:
    s, gpt, mbr = backup_set.path, backup_set.names["gpt"], backup_set.names["mbr"]
    listing = cli("ls", "--set-dir", s, "--disk", mbr, "--partition", "5", "/").stdout.split()
    assert "hello.txt" in listing and "frag/" in listing
    entries = json.loads(cli("ls", s, "/", "--disk", gpt, "--partition", "3", "--json").stdout)  # DIR as IMAGE
    assert "large.bin" in {e["name"] for e in entries}
    cli("extract", "--set-dir", s, "--disk", gpt, "--partition", "2", "/hello.txt", "/frag", tmp_path / "out")
    expected = backup_set.disks["gpt"].filesystems[2][1]
    assert fsbuild.sha256_file(tmp_path / "out" / "hello.txt") == expected["hello.txt"]
    assert fsbuild.sha256_file(tmp_path / "out" / "frag" / "fragmented.bin") == expected["frag/fragmented.bin"]
    err = cli("ls", "--set-dir", s, "--partition", "2", "/", check=2).stderr
    assert f"holds 2 disks ({gpt}, {mbr}); choose one with --disk NAME" in err and err.count("\n") == 1
    assert "no disk 'sdz'" in cli("ls", "--set-dir", s, "--disk", "sdz", "/", check=4).stderr
    info = cli("info", "--set-dir", s, "--disk", gpt).stdout
    assert re.search(r"\n  3 +53\.00 MiB +12\.00 MiB +Linux filesystem data +ext4 +testvol +\d", info), info
    assert "swap        testswap" in info and "(signature page)" in info
    assert "gpt 5c3c3b1e-1111-4222-8333-944455556666, 6 partitions" in info
    whole = json.loads(cli("info", "--json", s).stdout)
    assert set(whole["disks"]) == {gpt, mbr} and whole["manifest"]["version"] == 1
    assert "2 of 2" not in cli("verify", s).stdout  # every disk of the set: each prints its own count
    assert "partition 2 blake3" in cli("verify", "--set-dir", s, "--disk", gpt, "--partition", "2").stdout


def test_mount_and_webdav_on_a_set(backup_set: BackupSet, tmp_path: Path) -> None:
    need_tools("fusermount3", "curl")
    s, gpt = backup_set.path, backup_set.names["gpt"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli("mount", "--set-dir", s, "--disk", gpt, mnt)
    try:
        assert sorted(os.listdir(mnt)) == ["disk.raw", *(f"p{n}.raw" for n in range(1, 7))]
        entry = next(d for d in manifest(s)["disks"] if d["name"] == gpt)
        assert os.path.getsize(mnt / "p2.raw") == entry["partitions"][1]["length"]
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "webdav", "--set-dir", str(s), "--disk", gpt,
                             "--partition", "1", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+)", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        for _ in range(50):
            got = subprocess.run(["curl", "-sf", url.group(1).rstrip("/;") + "/hello.txt"], capture_output=True)
            if got.returncode == 0:
                break
            time.sleep(0.1)
        assert got.stdout == b"hello, world\n"
    finally:
        proc.terminate()
        proc.wait(20)
