"""source_identity of regular files and loop devices; identity_mismatch for resume."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from devhelpers import partitions, random_file, sfdisk

import imaging_utility
from imaging_utility.devices import identity
from imaging_utility.devices.identity import identity_mismatch, partition_table, source_identity
from imaging_utility.devices.source import FileSource

LoopDev = Callable[..., str]
MiB = 1 << 20
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _identity(path: str | Path) -> dict[str, object]:
    with FileSource(str(path)) as src:
        ident = source_identity(str(path), src)
    assert json.loads(json.dumps(ident)) == ident  # JSON-able as is
    return ident


def _check_common(ident: dict[str, object]) -> None:
    assert ident["host"] == socket.gethostname()
    assert ident["tool_version"] == imaging_utility.__version__
    assert ident["command_line"] == sys.argv
    assert ISO_Z.match(str(ident["created"]))


def test_regular_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "disk.raw"
    random_file(path, 3 * MiB + 5)
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    monkeypatch.chdir(tmp_path)
    ident = _identity("disk.raw")  # a relative path is stored absolute
    st = path.stat()
    assert ident["kind"] == "file"
    assert ident["path"] == str(path)
    assert ident["size"] == 3 * MiB + 5
    assert ident["mtime"] == "2023-11-14T22:13:20.123456Z"
    assert ident["mtime_ns"] == 1_700_000_000_123_456_789
    assert (ident["inode"], ident["device_number"]) == (st.st_ino, st.st_dev)
    _check_common(ident)


def test_file_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    random_file(path, MiB)
    stored = _identity(path)
    assert identity_mismatch(stored, _identity(path)) is None  # time and command line differ: fine

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))
    msg = identity_mismatch(stored, _identity(path))
    assert msg is not None and "modified" in msg and str(path) in msg and "\n" not in msg

    stored = _identity(path)
    with path.open("ab") as f:
        f.write(b"more")
    msg = identity_mismatch(stored, _identity(path))
    assert msg == f"source size changed: was {MiB} bytes, now {MiB + 4} bytes"

    other = tmp_path / "copy.raw"
    other.write_bytes(path.read_bytes())
    os.utime(other, ns=(st.st_atime_ns, path.stat().st_mtime_ns))
    msg = identity_mismatch(_identity(path), _identity(other))
    assert msg is not None and "copy.raw" in msg


def test_loop_identity(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "plain.img"
    random_file(image, 4 * MiB)
    dev = loopdev(image)
    ident = _identity(dev)
    name = os.path.basename(dev)
    rdev = os.stat(dev).st_rdev
    assert ident["kind"] == "block-device"
    assert (ident["path"], ident["device"], ident["name"]) == (dev, dev, name)
    assert (ident["major"], ident["minor"]) == (os.major(rdev), os.minor(rdev))
    assert ident["backing_file"] == str(image)
    assert ident["size"] == 4 * MiB
    assert (ident["logical_sector_size"], ident["physical_sector_size"]) == (512, 512)
    assert ident["whole_disk"] is True and ident["parent"] is None and ident["partition_number"] is None
    assert ident["partition_table"] is None  # random bytes: no MBR signature, no GPT header
    _check_common(ident)

    file_ident = _identity(image)
    assert identity_mismatch(ident, file_ident) == (
        "source kind changed: the image was of a block-device, this is a file")


def test_partitioned_loop_identity(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "parted.img"
    random_file(image, 16 * MiB)
    sfdisk(image, "label: dos\nlabel-id: 0x1badcafe\nstart=2048, size=8192, type=83\nstart=10240, type=83\n")
    dev = loopdev(image, partscan=True)
    p1, p2 = partitions(dev, 2)
    disk = _identity(dev)
    assert disk["partition_table"] == {"type": "dos", "id": "1badcafe"}
    assert disk["whole_disk"] is True and disk["size"] == 16 * MiB

    part = _identity(p2)
    assert part["whole_disk"] is False
    assert part["parent"] == os.path.basename(dev)
    assert part["partition_number"] == 2
    assert part["partition_start"] == 10240 * 512
    assert part["size"] == 16 * MiB - 10240 * 512
    assert part["partition_table"] is None  # only a whole disk reports its table
    assert part["backing_file"] == str(image)  # the loop device under the partition
    assert identity_mismatch(part, _identity(p2)) is None
    msg = identity_mismatch(part, {**_identity(p1), "size": part["size"]})
    assert msg == f"source device partition start changed: was {10240 * 512}, now {2048 * 512}"

    sfdisk(dev, "label: dos\nlabel-id: 0x0badf00d\nstart=2048, size=8192, type=83\nstart=10240, type=83\n")
    msg = identity_mismatch(disk, _identity(dev))
    assert msg == "source disk was repartitioned: partition table was dos 1badcafe, now dos 0badf00d"


def test_gpt_4kn_identity(loopdev: LoopDev, tmp_path: Path) -> None:
    image = tmp_path / "gpt4k.img"
    image.write_bytes(bytes(16 * MiB))
    dev = loopdev(image, sector_size=4096)
    guid = uuid.UUID("0a1b2c3d-1111-2222-3333-444455556666")
    sfdisk(dev, f"label: gpt\nlabel-id: {guid}\nstart=256, size=1024\n")
    ident = _identity(dev)
    assert (ident["logical_sector_size"], ident["physical_sector_size"]) == (4096, 4096)
    assert ident["partition_table"] == {"type": "gpt", "id": str(guid)}
    # The same bytes seen as a file (512-byte sectors) still find the GPT header at byte 4096.
    with FileSource(str(image)) as src:
        assert partition_table(src) == {"type": "gpt", "id": str(guid)}


def test_stable_names_udev_and_hardware_ids(loopdev: LoopDev, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.img"
    random_file(image, MiB)
    dev, other = loopdev(image), loopdev(image)
    major, minor = os.major(os.stat(dev).st_rdev), os.minor(os.stat(dev).st_rdev)
    # A fake /dev/disk and udev database: this VM runs no udev.
    disk = tmp_path / "dev-disk"
    for sub, name, target in [
        ("by-id", "wwn-0x5000c500a1b2c3d4", dev), ("by-id", "ata-FAKE_DISK_SN123", dev),
        ("by-id", "ata-OTHER_DISK", other), ("by-path", "pci-0000:00:1f.2-ata-1", dev),
        ("by-uuid", "dangling", str(tmp_path / "gone")),
    ]:
        (disk / sub).mkdir(parents=True, exist_ok=True)
        (disk / sub / name).symlink_to(target)
    udev = tmp_path / "udev"
    udev.mkdir()
    (udev / f"b{major}:{minor}").write_text(
        "S:disk/by-id/ata-FAKE_DISK_SN123\nE:ID_SERIAL=FAKE_DISK_SN123\nE:ID_SERIAL_SHORT=SN123\n"
        "E:ID_MODEL=FAKE_DISK\nE:ID_BUS=ata\nE:SOMETHING_ELSE=x\n")
    monkeypatch.setattr(identity, "DEV_DISK", str(disk))
    monkeypatch.setattr(identity, "UDEV_DATA", str(udev))

    ident = _identity(dev)
    assert ident["stable_names"] == [
        str(disk / "by-id" / "ata-FAKE_DISK_SN123"), str(disk / "by-id" / "wwn-0x5000c500a1b2c3d4"),
        str(disk / "by-path" / "pci-0000:00:1f.2-ata-1"),
    ]
    assert ident["wwn"] == "0x5000c500a1b2c3d4"
    assert ident["serial"] == "SN123"
    assert ident["model"] == "FAKE_DISK"
    assert ident["udev"] == {"ID_BUS": "ata", "ID_MODEL": "FAKE_DISK", "ID_SERIAL": "FAKE_DISK_SN123",
                             "ID_SERIAL_SHORT": "SN123"}

    swapped = {**ident, "serial": "SN999"}
    assert identity_mismatch(ident, swapped) == "source device serial changed: was 'SN123', now 'SN999'"
    assert identity_mismatch(ident, {**ident, "wwn": "0x5000c500ffffffff"}) == (
        "source device wwn changed: was '0x5000c500a1b2c3d4', now '0x5000c500ffffffff'")
    # A rescue system without udev knows no serial: that alone does not block a resume,
    # and neither does a new device name after a reboot.
    assert identity_mismatch(ident, {**ident, "serial": None, "wwn": None, "path": "/dev/sdz"}) is None
    assert identity_mismatch(ident, {**ident, "size": 2 * MiB}) == (
        f"source size changed: was {MiB} bytes, now {2 * MiB} bytes")


def test_vpd_unit_serial_page(tmp_path: Path) -> None:
    page = tmp_path / "vpd_pg80"
    page.write_bytes(bytes([0x00, 0x80, 0x00, 0x0E]) + b"  WD-WCC4N1234\0")
    assert identity._vpd_serial(str(page)) == "WD-WCC4N1234"
    page.write_bytes(bytes([0x00, 0x83, 0x00, 0x04]) + b"abcd")  # another VPD page
    assert identity._vpd_serial(str(page)) is None
    assert identity._vpd_serial(str(tmp_path / "missing")) is None
