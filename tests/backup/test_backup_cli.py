"""Whole-disk imaging of disk-image files through the CLI (no root): the composed map, the header and the
manifest, info's table, and every bad input as one line with its exit code."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import fsbuild
from backup.diskbuild import SECTOR, Disk, MiB, make_simple_disk, sha256_range
from conftest import cli, need_tools
from imaging_utility.crc32c import crc32c
from imaging_utility.image.reader import open_image


@pytest.fixture(scope="module")
def simple(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    need_tools("sgdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs", "zstd")
    return make_simple_disk(tmp_path_factory.mktemp("simple"))


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_image_used_only_of_a_disk_file(simple: Disk, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    cli("image", "--used-only", simple.path, img)
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as out:  # still a plain zstd stream of the whole disk
        subprocess.run(["zstd", "-dc", str(img)], stdout=out, check=True)
    src = simple.path.read_bytes()
    got = raw.read_bytes()
    with open_image(str(img)) as reader:
        assert reader.allocation is not None
        for ext in reader.allocation:
            assert got[ext.offset:ext.end] == src[ext.offset:ext.end]
        disk = reader.header.meta["disk"]
        assert [(p["number"], p["kept"]) for p in disk["partitions"]] == [(1, "used-only"), (2, "used-only"),
                                                                          (3, "full")]
        digests = reader.trailer.meta["partition_digests"] if reader.trailer else {}
        assert set(digests) == {"1", "2", "3"}
    gap, n = simple.gap
    assert got[gap:gap + n] == src[gap:gap + n]  # the boot-loader gap after the GPT is kept
    assert got[17 * MiB:19 * MiB] == src[17 * MiB:19 * MiB]  # a partition without a filesystem: in full
    assert got[-33 * SECTOR:] == src[-33 * SECTOR:]  # the backup GPT
    for number, offset in ((1, 1 * MiB), (2, 9 * MiB)):
        family, expected = simple.filesystems[number]
        part = tmp_path / f"p{number}.raw"
        part.write_bytes(got[offset:offset + 8 * MiB])
        assert fsbuild.fsck(part, family).returncode == 0
        assert fsbuild.read_files(part, family) == expected
    info = cli("info", img).stdout
    assert "partitions   gpt 0d15c0de-2222-4333-8444-955566667777, 3 partitions" in info
    assert re.search(r"\n  2 +9\.00 MiB +8\.00 MiB +Linux filesystem data +ext4 +testvol +2\.\d\d MiB\n", info)
    assert "source       file " in info and "{" not in info.split("source", 1)[1].split("\n", 1)[0]
    assert "partition 2  blake3 " in info


def test_info_of_a_source_before_it_is_imaged(simple: Disk, tmp_path: Path) -> None:
    """info on a disk file (not an image): the table, each partition's filesystem and used bytes, what
    image --used-only would read, the same figures as the image then made; on one volume, on a file with
    nothing known, and on an image whose first bytes are damaged (still an image, reported as damaged)."""
    out = cli("info", simple.path).stdout
    assert f"source       {simple.path}: file, 24.00 MiB" in out and "not an image" in out
    assert "partitions   gpt 0d15c0de-2222-4333-8444-955566667777, 3 partitions" in out
    assert re.search(r"\n  2 +9\.00 MiB +8\.00 MiB +Linux filesystem data +ext4 +testvol +2\.\d\d MiB\n", out), out
    report = json.loads(cli("info", "--json", simple.path).stdout)
    img = tmp_path / "d.img"
    made = json.loads(cli("image", "--json", "--used-only", simple.path, img).stdout)
    assert report["image"] is False and report["used_only_bytes"] == made["used_bytes"]
    assert [(p["number"], p["kept"]) for p in report["disk"]["partitions"]] == [(1, "used-only"), (2, "used-only"),
                                                                                (3, "full")]
    assert "  3 " not in cli("info", "--partition", "2", simple.path).stdout.split("partitions", 1)[1]
    assert "the source's partitions: 1, 2, 3" in _one_line(cli("info", "--partition", "9", simple.path, check=4))
    volume = tmp_path / "vol.raw"  # partition 2 alone
    volume.write_bytes(simple.path.read_bytes()[9 * MiB : 17 * MiB])
    out = cli("info", volume).stdout
    assert "filesystem   ext4 'testvol', 8.00 MiB, used 2." in out and "'image --used-only' reads 2." in out
    noise = tmp_path / "noise.raw"
    noise.write_bytes(bytes(range(256)) * 4096)
    assert "none known, no partition table; 'image --used-only' would refuse it" in cli("info", noise).stdout
    data = bytearray(img.read_bytes())
    data[0] ^= 0xFF
    img.write_bytes(data)
    proc = cli("info", img, check=8)
    assert "not an image" not in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr


def test_info_names_a_filesystem_it_cannot_map(simple: Disk, tmp_path: Path) -> None:
    """Partition 2's ext4 flagged as needing journal recovery (as a crash leaves it): the row names ext4,
    not mapped, the warning says why, and the partition counts in full."""
    disk = tmp_path / "disk.raw"
    data = bytearray(simple.path.read_bytes())
    sb = 9 * MiB + 1024
    incompat = struct.unpack_from("<I", data, sb + 0x60)[0]
    struct.pack_into("<I", data, sb + 0x60, incompat | 0x4)  # INCOMPAT_RECOVER
    struct.pack_into("<I", data, sb + 0x3FC, ~crc32c(bytes(data[sb : sb + 0x3FC])) & 0xFFFFFFFF)
    disk.write_bytes(data)
    proc = cli("info", disk)
    row = r"\n  2 +9\.00 MiB +8\.00 MiB +Linux filesystem data +ext4 \(not mapped\) +- +8\.00 MiB\n"
    assert re.search(row, proc.stdout), proc.stdout  # the used column: the whole partition
    assert "partition 2 (ext4): ext superblock found but its journal needs recovery" in proc.stderr, proc.stderr


def test_info_of_a_mounted_device(simple: Disk, tmp_path: Path, loopdev: Callable[..., str]) -> None:
    """info on a block device says what is mounted, and that image would refuse it while read-write."""
    volume = tmp_path / "vol.raw"
    volume.write_bytes(simple.path.read_bytes()[9 * MiB : 17 * MiB])
    dev = loopdev(volume)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        out = cli("info", dev).stdout
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert f"source       {dev}: block device, 8.00 MiB" in out
    assert "filesystem   ext4, not mapped: ext superblock found but its journal needs recovery" in out
    assert f"is mounted read-write at {mnt} (ext4): 'image' refuses it until it is unmounted or read-only" in out


def test_backup_set_of_files_and_its_manifest(simple: Disk, tmp_path: Path) -> None:
    other = tmp_path / "other.raw"
    shutil.copy(simple.path, other)
    s = tmp_path / "set"
    out = json.loads(cli("backup-disk", "--json", "--hash", "sha256,blake3", simple.path, other, s).stdout)
    assert [d["name"] for d in out["disks"]] == ["simple", "other"]
    manifest = json.loads((s / "backup.manifest.json").read_text())
    assert manifest["schema"] == "imaging-utility backup manifest" and manifest["version"] == 1
    disk = manifest["disks"][0]
    assert disk["status"] == "complete" and disk["image"] == ["simple.img.zst"]
    assert disk["table"]["type"] == "gpt" and disk["table"]["first_usable_lba"] == 34
    assert disk["identity"]["size"] == 24 * MiB
    p2 = disk["partitions"][1]
    assert (p2["start"], p2["start_sector"], p2["length"], p2["sectors"]) == (9 * MiB, 18432, 8 * MiB, 16384)
    assert p2["filesystem"]["type"] == "ext4" and p2["filesystem"]["label"] == "testvol"
    assert set(p2["digests"]) == {"sha256", "blake3"} and p2["image"] == "simple.img.zst"
    p3 = disk["partitions"][2]
    assert p3["kept"] == "full" and p3["digests"]["sha256"] == sha256_range(simple.path, 17 * MiB, 2 * MiB)
    # restore of a set's disk to a file: the whole disk, sparse
    back = tmp_path / "back.raw"
    cli("restore", s, back, "--disk", "simple")
    assert sha256_range(back, 17 * MiB, 2 * MiB) == p3["digests"]["sha256"]
    # an existing set is neither overwritten nor mixed with other disks
    assert "already holds a backup set" in _one_line(cli("backup-disk", simple.path, s, check=9))
    assert "it holds disks simple, other" in _one_line(cli("backup-disk", "--resume", simple.path, s, check=10))
    kept = json.loads(cli("backup-disk", "--resume", "--json", simple.path, other, s).stdout)
    assert [d["kept_from_earlier_run"] for d in kept["disks"]] == [True, True]


def test_manifest_that_no_longer_matches(simple: Disk, tmp_path: Path) -> None:
    s = tmp_path / "set"
    cli("backup-disk", simple.path, s)
    path = s / "backup.manifest.json"
    good = path.read_text()
    for i, (change, code, needle) in enumerate([
        (lambda m: m["disks"][0]["partitions"][1].update(start=10 * MiB), 8, "no longer matches simple.img.zst"),
        (lambda m: m["disks"][0]["digests"].update(blake3="0" * 64), 8, "its digests differ"),
        (lambda m: m["disks"][0].update(status="in progress"), 8, "did not finish"),
        (lambda m: m["disks"][0].update(image=["gone.img.zst"]), 4, "lists gone.img.zst, which is missing"),
        (lambda m: m["disks"][0].update(image=["../../etc/passwd"]), 8, "'disks' list is malformed"),
        (lambda m: m.update(version=7), 8, "manifest version 7"),
    ]):
        manifest = json.loads(good)
        change(manifest)
        path.write_text(json.dumps(manifest))
        commands = [["info", s]]
        if i == 0:  # every command checks the set the same way; the others are checked by info only
            commands += [["restore", s, tmp_path / "x.raw"], ["verify", s], ["ls", "--set-dir", s],
                         ["serve-proxy", "--set-dir", s, "--port", "0"]]
        for command in commands:
            assert needle in _one_line(cli(*command, check=code)), command
    path.write_text("{not json")
    assert "is not valid JSON" in _one_line(cli("info", s, check=8))


def test_truncated_disk_image_names_missing_and_cut_partitions(simple: Disk, tmp_path: Path) -> None:
    cut = tmp_path / "cut.raw"
    with open(simple.path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(12 * MiB))  # partition 2 (9..17 MiB) is cut, 3 (17..19 MiB) is missing
    err = _one_line(cli("ls", cut, "/", "--partition", "3", check=4))
    assert "partition 3 starts at byte 17825792, past the end of the source" in err and "truncated" in err
    listing = cli("ls", cut, "/", "--partition", "2", check=None)  # what can be read is listed, with a warning
    assert "partition 2 is cut: the table gives 8388608 bytes, the source holds 3145728" in listing.stderr
    assert "Traceback" not in listing.stderr
    err = _one_line(cli("image", "--used-only", cut, tmp_path / "x.img", check=9))
    assert "partition 3 starts at byte 17825792, beyond the disk's end (12582912) (and 1 more)" in err
    cli("image", cut, tmp_path / "cut.img")
    out = cli("info", tmp_path / "cut.img")
    assert "partition 2 is cut: the table gives 8388608 bytes, the source holds 3145728" in out.stderr
    assert "partition 3 past that point: they are missing" in out.stderr
    assert "3.00 MiB (cut)" in out.stdout


def test_damaged_primary_gpt_uses_the_backup(simple: Disk, tmp_path: Path) -> None:
    disk = tmp_path / "damaged.raw"
    shutil.copy(simple.path, disk)
    with open(disk, "r+b") as f:
        f.seek(SECTOR + 40)
        f.write(b"\xff")  # first_usable_lba: the primary header's CRC now fails
    s = tmp_path / "set"
    err = cli("backup-disk", disk, s).stderr
    assert "the primary GPT (LBA 1) is damaged; using the backup GPT at LBA 49151" in err
    entry = json.loads((s / "backup.manifest.json").read_text())["disks"][0]
    assert [p["filesystem"]["type"] if p["filesystem"] else None for p in entry["partitions"]] == \
        ["fat16", "ext4", None]
    assert entry["table"]["primary_ok"] is False


def _mbr(entries: list[tuple[int, int, int]], size: int) -> bytes:
    disk = bytearray(size)
    for i, (ptype, lba, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", disk, 0x1BE + 16 * i, 0, b"\0\0\0", ptype, b"\0\0\0", lba, count)
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


@pytest.mark.parametrize(("entries", "needle"), [
    ([(0x83, 2048, 8192), (0x83, 8192, 8192)], "partitions 1 and 2 overlap"),
    ([(0x83, 2048, 8192), (0x07, 12288, 40960)], "partition 2 ends at byte 27262976, beyond the disk's end"),
])
def test_untrusted_tables_are_refused(tmp_path: Path, entries: list[tuple[int, int, int]], needle: str) -> None:
    disk = tmp_path / "bad.raw"
    disk.write_bytes(_mbr(entries, 16 * MiB))
    for command in (["image", "--used-only", disk, tmp_path / "x.img"], ["backup-disk", disk, tmp_path / "s"]):
        err = _one_line(cli(*command, check=9))
        assert needle in err and "image the disk in full" in err
    auto = cli("image", "--used-only=auto", disk, tmp_path / "auto.img")
    assert needle in auto.stderr and "imaging in full (--used-only=auto)" in auto.stderr


def test_disk_without_a_table(tmp_path: Path) -> None:
    need_tools("mke2fs")
    vol = tmp_path / "vol.raw"
    fsbuild.make_ext(vol, 8, None)
    noise = tmp_path / "noise.raw"
    fsbuild.random_image(noise, 2)
    s = tmp_path / "set"
    err = cli("backup-disk", vol, noise, s).stderr
    assert "vol: no partition table: imaged as one ext4 volume (used-only)" in err
    assert "noise: no partition table and no known filesystem: imaged in full" in err
    info = cli("info", s, "--disk", "vol").stdout
    assert "filesystem   ext4 'testvol', 8.00 MiB, used" in info


def test_restore_continue_on_error(simple: Disk, tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    cli("image", "--used-only", simple.path, img)
    with open_image(str(img)) as reader:
        chunk = 10  # inside partition 2 (ext4, 9..17 MiB)
        assert not reader.is_zero_chunk(chunk)
        at = reader.chunk_offsets[chunk] + reader.chunk_csizes[chunk] // 2
    data = bytearray(img.read_bytes())
    data[at] ^= 0x55
    img.write_bytes(bytes(data))
    assert "chunk 10" in _one_line(cli("restore", img, tmp_path / "a.raw", check=8))
    out = cli("restore", "--continue-on-error", img, tmp_path / "b.raw", check=3)
    assert "chunk 10 (bytes 10485760..11534336) is corrupt and was zero-filled" in out.stderr
    assert "1 corrupt chunk(s) (1048576 bytes) were zero-filled" in out.stderr
    got = (tmp_path / "b.raw").read_bytes()
    assert got[10 * MiB:11 * MiB] == bytes(MiB)
    assert got[17 * MiB:19 * MiB] == simple.path.read_bytes()[17 * MiB:19 * MiB]
    part = cli("restore", "--continue-on-error", "--partition", "2", img, tmp_path / "p2.raw", check=3)
    assert "chunk 10 (bytes 10485760..11534336)" in part.stderr


def test_info_of_a_partition_window(simple: Disk, tmp_path: Path) -> None:
    img = tmp_path / "p2.img"
    cli("image", "--used-only", "--offset", "9M", "--length", "8M", simple.path, img)
    info = cli("info", img).stdout
    assert "filesystem   ext4 'testvol', 8.00 MiB, used " in info
    assert "window of 8388608 bytes at byte 9437184" in info
