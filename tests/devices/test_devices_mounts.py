"""mount_state / check_source_mounts / check_target_safe against real ext4 loop mounts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from devhelpers import mkfs_ext4, mounted, partitions, sfdisk

from imaging_utility.devices import mounts
from imaging_utility.devices.mounts import check_source_mounts, check_target_safe, mount_state
from imaging_utility.errors import NotFoundError, RefusedError

LoopDev = Callable[..., str]
MiB = 1 << 20


@pytest.fixture
def ext4_loop(loopdev: LoopDev, tmp_path: Path) -> tuple[str, Path]:
    image = tmp_path / "ext4.img"
    image.write_bytes(bytes(16 * MiB))
    mkfs_ext4(image)
    return loopdev(image), image


def test_unmounted_device_is_fine(ext4_loop: tuple[str, Path]) -> None:
    dev, image = ext4_loop
    state = mount_state(dev)
    assert not state.mounted and not state.read_write and not state.read_only
    assert check_source_mounts(dev, allow_mounted=False) == []
    check_target_safe(dev)
    check_target_safe(str(image.parent / "new-file.raw"))  # does not exist yet: nothing to protect


def test_read_write_mount_refused(ext4_loop: tuple[str, Path], tmp_path: Path) -> None:
    dev, image = ext4_loop
    with mounted(dev, tmp_path / "mnt") as mnt:
        state = mount_state(dev)
        assert state.mounted and state.read_write
        assert [(m.device, m.mount_point, m.fstype, m.read_only) for m in state.mounts] == [
            (os.path.basename(dev), str(mnt), "ext4", False)]
        with pytest.raises(RefusedError) as exc:
            check_source_mounts(dev, allow_mounted=False)
        assert exc.value.exit_code == 9
        assert f"source {dev} is in use" in str(exc.value) and str(mnt) in str(exc.value)
        assert "--allow-mounted" in str(exc.value) and "\n" not in str(exc.value)

        warnings = check_source_mounts(dev, allow_mounted=True)
        assert len(warnings) == 1 and "read-write" in warnings[0] and "inconsistent" in warnings[0]

        with pytest.raises(RefusedError, match=f"restore target {dev} is in use: .* at {mnt}"):
            check_target_safe(dev)
        # The backing file of a mounted loop device is just as much in use.
        with pytest.raises(RefusedError, match=f"loop device {os.path.basename(dev)} backed by {image}"):
            check_source_mounts(str(image), allow_mounted=False)
        with pytest.raises(RefusedError, match="in use"):
            check_target_safe(str(image))


def test_read_only_mount_warns(ext4_loop: tuple[str, Path], tmp_path: Path) -> None:
    dev, _image = ext4_loop
    with mounted(dev, tmp_path / "mnt", read_only=True) as mnt:
        state = mount_state(dev)
        assert state.mounted and state.read_only and not state.read_write
        warnings = check_source_mounts(dev, allow_mounted=False)
        assert warnings == [f"source {dev}: {dev} is mounted read-only at {mnt} (ext4); imaging it is safe"]
        with pytest.raises(RefusedError, match="read-only"):
            check_target_safe(dev)  # a restore target must not be mounted at all


def test_partition_of_whole_disk_mounted(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(24 * MiB))
    sfdisk(image, "label: dos\nstart=2048, size=20480, type=83\nstart=22528, type=83\n")
    dev = loopdev(image, partscan=True)
    p1, p2 = partitions(dev, 2)
    mkfs_ext4(p1)
    with mounted(p1, tmp_path / "mnt") as mnt:
        with pytest.raises(RefusedError) as exc:
            check_source_mounts(dev, allow_mounted=False)
        part = os.path.basename(p1)
        assert f"partition {part} of {os.path.basename(dev)} is mounted read-write at {mnt}" in str(exc.value)
        with pytest.raises(RefusedError, match=f"partition {part}"):
            check_target_safe(dev)
        # The other partition is not mounted, and is not busy.
        assert check_source_mounts(p2, allow_mounted=False) == []
        check_target_safe(p2)


def test_target_busy_without_mount(ext4_loop: tuple[str, Path]) -> None:
    dev, image = ext4_loop
    fd = os.open(dev, os.O_RDONLY | os.O_EXCL)  # another program holding the device exclusively
    try:
        with pytest.raises(RefusedError, match=f"restore target {dev} is busy"):
            check_target_safe(dev)
    finally:
        os.close(fd)
    check_target_safe(dev)
    # A file attached to a loop device is in use even when nothing is mounted.
    with pytest.raises(RefusedError, match=f"attached to {dev}"):
        check_target_safe(str(image))


def test_read_only_bind_of_read_write_filesystem_is_read_write(ext4_loop: tuple[str, Path],
                                                                tmp_path: Path) -> None:
    # Only a read-only bind remains, but the filesystem (superblock) under it is read-write and
    # may still write to the device (journal, orphan cleanup): it must count as read-write.
    dev, _image = ext4_loop
    bind = tmp_path / "bind"
    with mounted(dev, tmp_path / "mnt") as mnt:
        bind.mkdir()
        subprocess.run(["mount", "--bind", str(mnt), str(bind)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(bind)], check=True)
        state = mount_state(dev)
        assert [(m.mount_point, m.read_only) for m in state.mounts] == [(str(bind), False)]
        with pytest.raises(RefusedError, match=f"read-write at {bind}"):
            check_source_mounts(dev, allow_mounted=False)
    finally:
        subprocess.run(["umount", "-l", str(bind)], check=False)


def test_mounted_holder_counts(loopdev: LoopDev, ext4_loop: tuple[str, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # No device-mapper here, so the holder relation (e.g. LVM's dm-0 on top of the disk) is
    # faked in a sysfs copy: mounting the "dm-0" (really a second loop device) uses the disk.
    disk_image = tmp_path / "disk.img"
    disk_image.write_bytes(bytes(MiB))
    disk = loopdev(disk_image)
    holder, _ = ext4_loop
    sysfs = tmp_path / "sys"

    def devdir(name: str, dev: str) -> Path:
        d = sysfs / "devices" / name
        d.mkdir(parents=True)
        rdev = os.stat(dev).st_rdev
        (d / "dev").write_text(f"{os.major(rdev)}:{os.minor(rdev)}\n")
        (sysfs / "dev-block").mkdir(exist_ok=True)
        (sysfs / "dev-block" / f"{os.major(rdev)}:{os.minor(rdev)}").symlink_to(d)
        (sysfs / "class-block").mkdir(exist_ok=True)
        (sysfs / "class-block" / name).symlink_to(d)
        return d

    disk_dir = devdir("fakedisk", disk)
    devdir("dm-0", holder)
    (disk_dir / "holders").mkdir()
    (disk_dir / "holders" / "dm-0").symlink_to(sysfs / "class-block" / "dm-0")
    monkeypatch.setattr(mounts, "SYS_DEV_BLOCK", str(sysfs / "dev-block"))
    monkeypatch.setattr(mounts, "SYS_CLASS_BLOCK", str(sysfs / "class-block"))

    assert check_source_mounts(disk, allow_mounted=False) == []
    with mounted(holder, tmp_path / "mnt") as mnt:
        with pytest.raises(RefusedError, match=f"dm-0 \\(built on fakedisk\\) is mounted read-write at {mnt}"):
            check_source_mounts(disk, allow_mounted=False)
        with pytest.raises(RefusedError, match="dm-0"):
            check_target_safe(disk)


def test_missing_source_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"not found: .*absent"):
        check_source_mounts(str(tmp_path / "absent"), allow_mounted=False)
