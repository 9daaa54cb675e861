"""Linux MD RAID members: a RAID-1 member is imaged used-only through its data area (its filesystem made
by its own mkfs, an LVM2 PV on it too), restored with the superblock intact (``mdadm --examine``), checked
clean with identical files, and read by ``ls``/``extract``; a member of any other level is refused in one
line, even where a filesystem that would map sits at its byte 0 (0.90 and 1.0 keep their superblock at the
end, so the array's first chunk, with its filesystem's superblock, is there).  The superblocks are
written by ``mdbuild`` (no md driver here) and read back by ``mdadm --examine``."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import lfsbuild
import mdbuild
import pytest

import fsbuild
from conftest import cli, need_root, need_tools

MiB = 1 << 20


def _examine(path: Path) -> str:
    with lfsbuild.loop(path, read_only=True) as dev:
        return lfsbuild.run("mdadm", "--examine", dev)


def _window(path: Path, begin: int, length: int, dest: Path) -> Path:
    with open(path, "rb") as f:
        f.seek(begin)
        dest.write_bytes(f.read(length))
    return dest


def _splice(path: Path, begin: int, data: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(begin)
        f.write(data.read_bytes())


def _area(version: str, size: int) -> tuple[int, int]:
    """Where the array's data lies in a member of ``size`` bytes: whole MiB, as the fixtures need."""
    if version in ("1.1", "1.2"):
        return MiB, size - 2 * MiB  # a MiB after it too: what lies outside the data area is kept
    return 0, size - MiB


Maker = Callable[[Path, int], dict[str, str]]
MAKERS: dict[str, tuple[Maker, Callable[[Path], dict[str, str]], Callable[[Path], int]]] = {
    "ext4": (lambda p, n: fsbuild.make_ext(p, n, None), lambda p: fsbuild.read_files(p, "ext"),
             lambda p: fsbuild.fsck(p, "ext").returncode),
    "fat32": (lambda p, n: fsbuild.make_fat(p, n, None, 32), lambda p: fsbuild.read_files(p, "fat"),
              lambda p: fsbuild.fsck(p, "fat").returncode),
    "btrfs": (lambda p, n: lfsbuild.make_btrfs(p, n, None), lfsbuild.read_tree,
              lambda p: lfsbuild.check(p, "btrfs").returncode),
}


def _member(tmp: Path, version: str, kind: str, size_mib: int, level: int = 1,
            **sb: int) -> tuple[Path, dict[str, str]]:
    """A member of ``size_mib`` MiB of random bytes with ``kind`` made in its data area."""
    need_root()
    need_tools("mdadm", "losetup", "mount")
    path = tmp / f"member-{version}.raw"
    fsbuild.random_image(path, size_mib, 31)
    begin, length = _area(version, size_mib * MiB)
    scratch = tmp / "array.raw"
    expected = MAKERS[kind][0](scratch, length // MiB)
    _splice(path, begin, scratch)
    scratch.unlink()
    if version == "0.90":
        mdbuild.write_sb0(path, level, 2)
    else:
        mdbuild.write_sb1(path, version, level, 2, begin, length, **sb)
    return path, expected


@pytest.mark.parametrize(("version", "kind", "size_mib"), [("1.2", "btrfs", 160), ("1.0", "fat32", 64),
                                                            ("0.90", "ext4", 64)])
def test_raid1_member_used_only(version: str, kind: str, size_mib: int, tmp_path: Path) -> None:
    member, expected = _member(tmp_path, version, kind, size_mib)
    examined = _examine(member)
    assert "raid1" in examined and "correct" in examined, examined
    shown = cli("info", member).stdout
    assert f"md/host:0: {kind}" in shown or f"md/6b8f1c2e-3d4a-4b5c-9e7f-0a1b2c3d4e5f: {kind}" in shown, shown
    image = tmp_path / "member.zst"
    done = cli("image", "--used-only", "--json", member, image)
    read = json.loads(done.stdout)["read_bytes"]
    assert read < size_mib * MiB * 0.7, read  # the random free space is not read
    restored = tmp_path / "restored.raw"
    cli("restore", image, restored)
    begin, length = _area(version, size_mib * MiB)
    with open(member, "rb") as a, open(restored, "rb") as b:  # everything outside the data area kept
        for off, n in ((0, begin), (begin + length, size_mib * MiB - begin - length)):
            a.seek(off)
            b.seek(off)
            assert a.read(n) == b.read(n), (off, n)
    assert _examine(restored) == examined
    member.unlink()
    array = _window(restored, begin, length, tmp_path / "array.raw")
    _, read_files, check = MAKERS[kind]
    assert check(array) == 0
    assert read_files(array) == expected
    out = tmp_path / "out"
    cli("extract", image, "/", out)
    assert lfsbuild.hash_regular(out) == expected


@pytest.mark.parametrize(("version", "level"), [("1.0", 5), ("0.90", 0), ("1.0", 10), ("1.2", 6), ("1.0", -1)])
def test_striped_member_is_refused_not_mapped(version: str, level: int, tmp_path: Path) -> None:
    """An ext4 made over the member's data area would map: the superblock saying the array is striped
    (or linear) must win, since that filesystem would be the array's."""
    member, _ = _member(tmp_path, version, "ext4", 64, level)
    run = cli("image", "--used-only", member, tmp_path / "m.zst", check=4)
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"Linux MD {mdbuild_level(level)} member (superblock {version}" in run.stderr, run.stderr
    assert "use the assembled array" in run.stderr
    listed = cli("ls", member, "/", check=4)
    assert "use the assembled array" in listed.stderr and listed.stderr.count("\n") == 1
    auto = cli("image", "--used-only=auto", member, tmp_path / "m.zst")
    assert "imaging in full" in auto.stderr
    cli("restore", tmp_path / "m.zst", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == member.read_bytes()


def mdbuild_level(level: int) -> str:
    return {-1: "linear", 0: "RAID-0", 5: "RAID-5", 6: "RAID-6", 10: "RAID-10"}[level]


def test_spare_member_is_kept_in_full(tmp_path: Path) -> None:
    member, _ = _member(tmp_path, "1.2", "ext4", 64, role=0xFFFF, dev_number=2)
    assert "Spare" in _examine(member) or "spare" in _examine(member)
    run = cli("image", "--used-only", member, tmp_path / "m.zst", check=4)
    assert "it is a spare device" in run.stderr


@pytest.mark.parametrize("version", ["1.2", "0.90"])
def test_member_being_rebuilt_is_kept_in_full(version: str, tmp_path: Path) -> None:
    """A RAID-1 member in the middle of its rebuild holds the array's data only up to where the rebuild got:
    the filesystem there cannot map it."""
    if version == "1.2":
        member, _ = _member(tmp_path, version, "ext4", 64, recovery_offset=1000)
        assert "Recovery Offset : 1000 sectors" in _examine(member), _examine(member)
    else:
        member, _ = _member(tmp_path, version, "ext4", 64)
        mdbuild.write_sb0(member, 1, 2, state=0b010)  # active, not in sync
        assert "active" in _examine(member) and "sync" not in _examine(member).split("this")[1].split("\n")[0]
    run = cli("image", "--used-only", member, tmp_path / "m.zst", check=4)
    assert "it is being rebuilt" in run.stderr and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize("damage", ["checksum", "super_offset", "max_dev", "data_area", "level"])
def test_damaged_superblock_one_line(damage: str, tmp_path: Path) -> None:
    member, _ = _member(tmp_path, "1.2", "ext4", 64)
    with open(member, "r+b") as f:
        field = {"checksum": (216, "<I", 0x12345678), "super_offset": (144, "<Q", 0),
                 "max_dev": (220, "<I", 0xFFFFFFF0), "data_area": (136, "<Q", 2**40),
                 "level": (72, "<i", 77)}[damage]
        f.seek(4096 + field[0])
        f.write(struct.pack(field[1], field[2]))
    if damage != "checksum":
        _fix_checksum(member)
    run = cli("image", "--used-only", member, tmp_path / "m.zst", check=4)
    assert "MD superblock 1.2 at offset 4096 is damaged" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "MD superblock" in cli("info", member).stdout


def _fix_checksum(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(4096)
        sb = bytearray(f.read(4096))
    max_dev = min(struct.unpack_from("<I", sb, 220)[0], 1920)
    sb[216:220] = bytes(4)
    struct.pack_into("<I", sb, 216, mdbuild.csum(sb[: 256 + 2 * max_dev]))
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(sb)


def test_lvm_on_raid1(tmp_path: Path) -> None:
    """md RAID-1 → LVM2 PV → an XFS and an ext4 LV: every LV mapped, listed and read through the member."""
    need_root()
    need_tools("mdadm", "pvcreate")
    pv = tmp_path / "pv.raw"
    vol = lfsbuild.make_lvm(pv, 160, None)
    member = tmp_path / "member.raw"
    fsbuild.random_image(member, 162, 32)
    _splice(member, MiB, pv)
    mdbuild.write_sb1(member, "1.2", 1, 2, MiB, 160 * MiB, name="srv:pv")
    shown = cli("info", member).stdout
    assert "md/srv:pv: lvm2" in shown and f"{vol.vg}/data: xfs" in shown and f"{vol.vg}/home: ext4" in shown, shown
    image = tmp_path / "member.zst"
    cli("image", "--used-only", member, image)
    assert os.path.getsize(image) < 60 * MiB
    listed = cli("ls", "--lv", f"{vol.vg}/home", image, "/").stdout
    assert listed.strip()
    restored = tmp_path / "restored.raw"
    cli("restore", image, restored)
    assert _examine(restored) == _examine(member)
    pv_back = _window(restored, MiB, 160 * MiB, tmp_path / "pv-back.raw")
    lfsbuild.lvm_check(pv_back, vol.vg)
    for name in ("data", "home"):
        files, rc = lfsbuild.read_lv(vol, pv_back, name, tmp_path)
        assert rc == 0 and files == vol.expected[name], name


def test_disk_with_raid1_partition(tmp_path: Path) -> None:
    """A GPT disk whose first partition is a RAID-1 member: the partition is mapped through its array."""
    need_tools("sgdisk")
    member, expected = _member(tmp_path, "1.2", "ext4", 64)
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 100, 33)
    lfsbuild.run("sgdisk", "-n1:2048:+64M", "-t1:fd00", "-n2:0:0", "-t2:8300", disk)
    _splice(disk, MiB, member)
    _partition_1_through_its_array(disk, "md/host:0: ext4", expected, tmp_path)


def _partition_1_through_its_array(disk: Path, volume: str, expected: dict[str, str], tmp: Path) -> None:
    """``info`` names partition 1 as an MD member with its array's ``volume``; used-only and extract of it."""
    shown = cli("info", disk).stdout
    assert "partition 1: Linux MD RAID member" in shown and volume in shown, shown
    image = tmp / "disk.zst"
    cli("image", "--used-only", disk, image)
    out = tmp / "out"
    cli("extract", "--partition", "1", image, "/", out)
    assert lfsbuild.hash_regular(out) == expected


def _gpt_disk_with_ext4(tmp: Path, type_code: str, seed: int) -> Path:
    """A 100 MiB disk of random bytes, a GPT with one 40 MiB partition of ``type_code`` holding an ext4."""
    need_tools("sgdisk")
    disk = tmp / "disk.raw"
    fsbuild.random_image(disk, 100, seed)
    lfsbuild.run("sgdisk", "-n1:2048:+40M", f"-t1:{type_code}", disk)
    part = tmp / "p1.raw"
    fsbuild.make_ext(part, 40, None)
    _splice(disk, MiB, part)
    return disk


def test_striped_whole_disk_member_with_a_table_is_refused(tmp_path: Path) -> None:
    """A whole disk that is a RAID-0 member (superblock 1.0 at its end): the GPT at its start is the array's,
    and so is the ext4 in the partition that fits inside this disk; nothing of it may be mapped."""
    need_tools("mdadm")
    disk = _gpt_disk_with_ext4(tmp_path, "8300", 34)
    mdbuild.write_sb1(disk, "1.0", 0, 2, 0, 99 * MiB)
    run = cli("image", "--used-only", disk, tmp_path / "d.zst", check=4)
    assert "Linux MD RAID-0 member (superblock 1.0" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "not mapped" in cli("info", disk).stdout
    backup = cli("backup-disk", disk, tmp_path / "set")  # a whole-disk backup keeps it in full, and says why
    assert "its partition table is the array's, not this disk's: imaged in full" in backup.stderr, backup.stderr
    assert "0 partitions" in backup.stdout
    cli("restore", tmp_path / "set" / "disk.img.zst", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == disk.read_bytes()


def test_raid1_superblock_of_the_last_partition_is_not_the_disk_s(tmp_path: Path) -> None:
    """An MBR disk whose last partition, reaching the disk's end, is a 0.90 RAID-1 member: the superblock
    seen at the disk's end is that partition's, so the disk is still read through its table."""
    need_tools("sfdisk", "mdadm")
    member, expected = _member(tmp_path, "0.90", "ext4", 64)
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 65, 35)
    lfsbuild.run("sfdisk", "-q", disk, stdin=b"label: dos\nstart=2048, type=fd\n")
    _splice(disk, MiB, member)
    _partition_1_through_its_array(disk, "md/6b8f1c2e", expected, tmp_path)


@pytest.mark.parametrize("kind", ["imsm", "ddf", "ddf-4kn"])
def test_firmware_raid_member_is_not_mapped(kind: str, tmp_path: Path) -> None:
    """A disk of an Intel RST (IMSM) or DDF firmware RAID set: its GPT and the ext4 in it are the array's
    (on RAID-0, array offsets): the disk is kept in full and says why, `image --used-only` refuses it.
    ``ddf-4kn``: a 4Kn member copied to a file keeps its anchor in its last 4096-byte sector."""
    disk = _gpt_disk_with_ext4(tmp_path, "0700", 36)
    with open(disk, "r+b") as f:  # the metadata at the disk's end, where the firmware and mdadm look for it
        if kind == "imsm":
            f.seek(100 * MiB - 1024)
            f.write(b"Intel Raid ISM Cfg Sig. 1.3.00\0\0")
        else:
            f.seek(100 * MiB - (4096 if kind == "ddf-4kn" else 512))
            f.write(struct.pack(">I", 0xDE11DE11))
    name = "Intel Matrix Storage / RST firmware RAID set" if kind == "imsm" else "DDF firmware RAID set"
    run = cli("image", "--used-only", disk, tmp_path / "d.zst", check=4)
    assert name in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "firmware RAID, not mapped" in cli("info", disk).stdout
    backup = cli("backup-disk", disk, tmp_path / "set")
    assert f"{name}" in backup.stderr and "imaged in full" in backup.stderr, backup.stderr
    cli("restore", tmp_path / "set" / "disk.img.zst", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == disk.read_bytes()
    volume = tmp_path / "volume.raw"  # an unpartitioned set: its filesystem at byte 0 is the array's too
    fsbuild.make_ext(volume, 40, None)
    with open(volume, "r+b") as f:
        f.seek(40 * MiB - 1024)
        f.write(b"Intel Raid ISM Cfg Sig. 1.3.00\0\0")
    run = cli("image", "--used-only", volume, tmp_path / "v.zst", check=4)
    assert "its ext4 filesystem is the array's" in run.stderr, run.stderr
