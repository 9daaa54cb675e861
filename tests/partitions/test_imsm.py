"""Intel RST (IMSM) firmware RAID members: a RAID-1 volume of two disks holds the whole volume on each
member, so its partition table and filesystems map the member's bytes there (used-only); every other volume
(RAID-0, a rebuild under way) and damaged metadata keep their bytes whole, and a member with nothing mapped
is refused in one line.  The metadata is written by ``imsmbuild.py`` and read back by ``mdadm --examine``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import imsmbuild as I
import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imagetools import used_only_round_trip

MiB = 1 << 20


def _ext4_disk(path: Path, size: int, seed: int) -> dict[str, str]:
    """A GPT disk image of ``size`` bytes (random bytes first) with one ext4 partition from 1 MiB, filled."""
    fsbuild.random_image(path, size // MiB, seed)
    subprocess.run(["sgdisk", "-n1:2048:0", "-t1:8300", str(path)], check=True, capture_output=True)
    part = path.with_suffix(".p1")
    expected = fsbuild.make_ext(part, size // MiB - 2, None, seed=seed)
    with open(path, "r+b") as f, open(part, "rb") as p:
        f.seek(MiB)
        f.write(p.read())
    return expected


def _splice(disk: Path, at: int, data: bytes) -> None:
    with open(disk, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_raid1_member_is_used_only_through_its_volume(tmp_path: Path) -> None:
    need_root()
    need_tools("mdadm", "sgdisk", "losetup", "debugfs", "e2fsck")
    volume = tmp_path / "volume.raw"
    expected = _ext4_disk(volume, 80 * MiB, 21)
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 100, 22)
    _splice(disk, 0, volume.read_bytes())
    I.write(disk, [I.Vol("Volume0", 0, 80 * MiB)])
    examined = I.examine(disk)
    assert "correct" in examined and "RAID Level : 1" in examined and "Map State : normal" in examined, examined
    shown = cli("info", disk)
    assert "imsm/Volume0: gpt disk" in shown.stdout, shown.stdout
    used, original, restored = used_only_round_trip(disk, tmp_path)
    assert used < 35 * MiB  # of 100 MiB, all random
    assert restored[80 * MiB :] == original[80 * MiB :]  # past the volume: the metadata and the rest, whole
    assert restored[: MiB] == original[: MiB]  # the volume's GPT
    assert restored[80 * MiB - 33 * 512 : 80 * MiB] == original[80 * MiB - 33 * 512 : 80 * MiB]  # its backup
    part = tmp_path / "part.raw"
    part.write_bytes(restored[MiB : 79 * MiB])
    assert fsbuild.fsck(part, "ext").returncode == 0
    assert fsbuild.read_files(part, "ext") == expected
    cli("backup-disk", disk, tmp_path / "set")
    out = tmp_path / "files"
    cli("extract", "--partition", "1", disk, "/", out)
    assert fsbuild.hash_dir(out) == expected


def test_matrix_set_maps_the_mirror_and_keeps_the_stripe(tmp_path: Path) -> None:
    """Two volumes on the same disks: a RAID-1 one with ext4 (no table) and a RAID-0 one after it."""
    need_tools("mdadm", "losetup")
    need_root()
    vol = tmp_path / "vol.raw"
    expected = fsbuild.make_ext(vol, 40, None, seed=23)
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 100, 24)
    _splice(disk, 0, vol.read_bytes())
    I.write(disk, [I.Vol("Mirror", 0, 40 * MiB), I.Vol("Stripe", 40 * MiB, 80 * MiB, level=0)])
    examined = I.examine(disk)
    assert "[Mirror]" in examined and "[Stripe]" in examined and "RAID Level : 0" in examined, examined
    image = tmp_path / "disk.img.zst"
    run = cli("image", "--used-only", disk, image)
    assert "imsm/Stripe: a RAID-0 volume of 2 disks" in run.stderr, run.stderr
    back = tmp_path / "back.raw"
    cli("restore", image, back)
    original, restored = disk.read_bytes(), back.read_bytes()
    assert restored[40 * MiB :] == original[40 * MiB :]
    (tmp_path / "mirror.raw").write_bytes(restored[: 40 * MiB])
    assert fsbuild.read_files(tmp_path / "mirror.raw", "ext") == expected
    assert restored.count(0) > 20 * MiB  # the mirror's free blocks were dropped


@pytest.mark.parametrize("case", ["raid0", "raid0-4kn", "rebuilding", "checksum", "too-big", "overlap"])
def test_member_with_nothing_mapped_is_refused(case: str, tmp_path: Path) -> None:
    need_tools("sgdisk")
    disk = tmp_path / "disk.raw"
    _ext4_disk(disk, 64 * MiB, 25)
    vols = {"raid0": [I.Vol("Volume0", 0, 120 * MiB, level=0)], "raid0-4kn": [I.Vol("Volume0", 0, 120 * MiB, level=0)],
            "rebuilding": [I.Vol("Volume0", 0, 60 * MiB, migrating=True)],
            "checksum": [I.Vol("Volume0", 0, 60 * MiB)], "too-big": [I.Vol("Volume0", 0, 64 * MiB)],
            "overlap": [I.Vol("Volume0", 4 * MiB, 20 * MiB), I.Vol("Volume1", 10 * MiB, 20 * MiB)]}[case]
    I.write(disk, vols, sector=4096 if case.endswith("4kn") else 512)  # 4kn: a 4Kn member copied to a file
    if case == "checksum":
        raw = bytearray(disk.read_bytes())
        raw[64 * MiB - 1024 + 0xD8] ^= 1  # a byte of the disk table
        disk.write_bytes(bytes(raw))
    why = {"raid0": "a RAID-0 volume of 2 disks", "raid0-4kn": "a RAID-0 volume of 2 disks",
           "rebuilding": "being rebuilt or migrated",
           "checksum": "its checksum is wrong", "too-big": "does not fit before the metadata",
           "overlap": "RAID-1 volumes overlap"}[case]
    run = cli("image", "--used-only", disk, tmp_path / "d.zst", check=4)
    assert "Intel Matrix Storage / RST firmware RAID set" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    backup = cli("backup-disk", disk, tmp_path / "set")
    assert why in backup.stderr and "imaged in full" in backup.stderr, backup.stderr
    listed = cli("ls", "--partition", "1", disk, "/", check=4)  # the table is the array's (or unknown)
    assert "firmware RAID set" in listed.stderr and listed.stderr.count("\n") == 1, listed.stderr


def test_a_table_inside_the_volume_that_cannot_be_trusted_keeps_it(tmp_path: Path) -> None:
    """The RAID-1 volume's GPT claims a partition past the volume's end (found by the partitions fuzzer):
    that volume is kept whole with the reason, never an error for the whole disk."""
    need_tools("sgdisk")
    disk = tmp_path / "disk.raw"
    _ext4_disk(disk, 64 * MiB, 26)  # its partition reaches the disk's end, past the 32 MiB volume
    I.write(disk, [I.Vol("Volume0", 0, 32 * MiB)])
    backup = cli("backup-disk", disk, tmp_path / "set")
    assert "cannot be trusted" in backup.stderr and "imaged in full" in backup.stderr, backup.stderr
    cli("restore", tmp_path / "set", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == disk.read_bytes()


def _serve(image: Path) -> tuple[list[str], subprocess.Popen[str], str]:
    """(export names, the running server, its URI) of ``serve-proxy IMAGE`` on a free port."""
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", str(image), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    uri = re.search(r" at (\S+) ", proc.stdout.readline())
    assert uri, proc.stderr.read() if proc.stderr else ""
    listing = subprocess.run(["nbdinfo", "--list", "--json", uri.group(1)], capture_output=True, text=True,
                             check=True).stdout
    return sorted(re.findall(r'"export-name": "([^"]*)"', listing)), proc, uri.group(1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    return err


def test_raid1_volumes_served_over_nbd_and_fuse(tmp_path: Path) -> None:
    """Two RAID-1 volumes on the same members, each with its own GPT and ext4: ``serve-proxy`` offers each
    volume and its partitions (``imsm_NAME``, ``imsm_NAMEp1``, as /dev/md/NAME), ``mount`` shows them as
    files, and their bytes are the filesystems'.  The code before offered only the disk's own table, which
    is the first volume's: the second volume's files were out of reach."""
    need_tools("nbdinfo", "nbdcopy", "fusermount3", "sgdisk", "debugfs")
    sys_vol, data_vol = tmp_path / "sys.raw", tmp_path / "data.raw"
    want_sys, want_data = _ext4_disk(sys_vol, 40 * MiB, 31), _ext4_disk(data_vol, 40 * MiB, 32)
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 100, 33)
    _splice(disk, 0, sys_vol.read_bytes())
    _splice(disk, 40 * MiB, data_vol.read_bytes())
    I.write(disk, [I.Vol("Sys", 0, 40 * MiB), I.Vol("Data", 40 * MiB, 40 * MiB)])
    assert "[Sys]" in (examined := I.examine(disk)) and "[Data]" in examined, examined
    image = tmp_path / "disk.img.zst"
    cli("image", "--used-only", disk, image)
    names, proc, uri = _serve(image)
    try:
        assert names == ["", "imsm_Data", "imsm_Datap1", "imsm_Sys", "imsm_Sysp1", "p1"], names
        subprocess.run(["nbdcopy", uri + "imsm_Datap1", tmp_path / "datap1.nbd"], check=True, timeout=60)
        subprocess.run(["nbdcopy", uri + "imsm_Data", tmp_path / "data.nbd"], check=True, timeout=60)
    finally:
        _stop(proc)
    assert fsbuild.read_files(tmp_path / "datap1.nbd", "ext") == want_data
    assert (tmp_path / "data.nbd").read_bytes()[: MiB] == data_vol.read_bytes()[: MiB]  # the volume's GPT
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    cli("mount", image, mnt)
    try:
        assert sorted(os.listdir(mnt)) == ["disk.raw", "imsm_Data.raw", "imsm_Datap1.raw", "imsm_Sys.raw",
                                           "imsm_Sysp1.raw", "p1.raw"]
        assert fsbuild.read_files(mnt / "imsm_Sysp1.raw", "ext") == want_sys
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    out = tmp_path / "files"  # the same names for ls/extract --volume
    cli("extract", "--volume", "imsm_Datap1", image, "/", out)
    assert fsbuild.hash_dir(out) == want_data
    assert cli("ls", "--volume", "p1", image, "/").stdout == cli("ls", "--partition", "1", image, "/").stdout
    wrong = cli("ls", "--volume", "imsm_Data", image, "/", check=2)  # the volume holds a table, not a filesystem
    assert "--volume NAME (imsm_Datap1)" in wrong.stderr, wrong.stderr
    wrong = cli("ls", "--volume", "md126", image, "/", check=2)
    assert "imsm_Datap1" in wrong.stderr and wrong.stderr.count("\n") == 1, wrong.stderr
    wrong = cli("ls", "--volume", "p1", "--partition", "1", image, "/", check=2)
    assert "cannot be combined" in wrong.stderr, wrong.stderr


def test_array_table_is_not_served_as_the_members(tmp_path: Path) -> None:
    """A member whose first volume is RAID-0: the GPT at its start is the array's, so its partitions are not
    offered (one warning line says why; ``--partition 1`` is refused, exit 4), while the RAID-1 volume after
    it is.  The code before offered ``p1``: bytes of this disk that are half of the array's partition."""
    need_tools("nbdinfo", "nbdcopy", "sgdisk", "debugfs")
    mirror = tmp_path / "mirror.raw"
    want = _ext4_disk(mirror, 40 * MiB, 34)
    disk = tmp_path / "disk.raw"
    _ext4_disk(disk, 100 * MiB, 35)  # a GPT at the start whose partition the stripe's data would hold
    _splice(disk, 40 * MiB, mirror.read_bytes())
    I.write(disk, [I.Vol("Stripe", 0, 80 * MiB, level=0), I.Vol("Mirror", 40 * MiB, 40 * MiB)])
    image = tmp_path / "disk.img.zst"
    cli("image", disk, image)
    names, proc, uri = _serve(image)
    try:
        subprocess.run(["nbdcopy", uri + "imsm_Mirrorp1", tmp_path / "p1.nbd"], check=True, timeout=60)
    finally:
        err = _stop(proc)
    assert names == ["", "imsm_Mirror", "imsm_Mirrorp1"], names
    assert "partitions of the table at the disk's start are not offered" in err and "RAID-0" in err, err
    assert fsbuild.read_files(tmp_path / "p1.nbd", "ext") == want
    run = cli("serve-proxy", "--partition", "1", image, "--port", "0", check=4)
    assert "RAID-0" in run.stderr.splitlines()[-1] and "error:" not in run.stderr.splitlines()[0], run.stderr
    run = cli("export", "--partition", "1", image, tmp_path / "p1.vhdx", "--format", "vhdx", check=4)
    assert "RAID-0" in run.stderr.splitlines()[-1] and not (tmp_path / "p1.vhdx").exists(), run.stderr


def test_member_of_a_4kn_disk_copied_to_a_file(tmp_path: Path) -> None:
    """A 4Kn member (metadata in 4096-byte sectors, the volume's GPT too) copied to a file, where nothing says
    its sectors are 4096 bytes: its metadata is found and its RAID-1 volume used-only, as on the device.  The
    code before looked only where a 512-byte disk keeps it, took the disk for a plain one and its array's
    table for the disk's."""
    need_root()
    need_tools("mdadm", "sgdisk", "losetup", "debugfs", "e2fsck")
    volume = tmp_path / "volume.raw"
    fsbuild.random_image(volume, 80, 41)
    dev = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", str(volume)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        subprocess.run(["sgdisk", "-n1:256:0", "-t1:8300", dev], check=True, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    part = tmp_path / "p1.raw"
    expected = fsbuild.make_ext(part, 78, None, seed=41)
    _splice(volume, MiB, part.read_bytes())
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 100, 42)
    _splice(disk, 0, volume.read_bytes())
    I.write(disk, [I.Vol("Volume0", 0, 80 * MiB)], sector=4096)
    examined = I.examine(disk, sector=4096)
    assert "correct" in examined and "RAID Level : 1" in examined and "Sector Size : 4096" in examined, examined
    assert "imsm/Volume0: gpt disk" in cli("info", disk).stdout
    used, original, restored = used_only_round_trip(disk, tmp_path)
    assert used < 35 * MiB
    assert restored[80 * MiB :] == original[80 * MiB :]  # the metadata and past the volume, whole
    (tmp_path / "back.p1").write_bytes(restored[MiB : 79 * MiB])
    assert fsbuild.fsck(tmp_path / "back.p1", "ext").returncode == 0
    assert fsbuild.read_files(tmp_path / "back.p1", "ext") == expected
