"""Export from what images come as besides one local file: one disk of a whole-disk backup set (and one
partition of its used-only disk image), and an image on S3 read in place (a real SeaweedFS).  Each
result is read by real readers: qemu-img, libvhdi/libvmdk, dissect, and the filesystem's own tools."""

from __future__ import annotations

import json
import os
from pathlib import Path

from exporthelpers import MiB, check_all_readers, image_raw, qemu_compare, rescued_image

from backup.backuphelpers import BackupSet
from conftest import cli
from fsbuild import fsck, read_files
from imagetools import mixed_bytes
from imaging_utility.image.reader import open_image
from imaging_utility.partitions import read_partitions
from storage.s3helpers import iu, one_line_error
from storage.s3server import S3Server

GPT_DISK_GUID = "5c3c3b1e-1111-4222-8333-944455556666"  # what backup/diskbuild.py gives the GPT disk


def _slice(raw: Path, offset: int, length: int, dest: Path) -> Path:
    with open(raw, "rb") as f:
        f.seek(offset)
        dest.write_bytes(f.read(length))
    return dest


def test_one_disk_of_a_backup_set(backup_set: BackupSet, tmp_path: Path) -> None:
    set_dir, gpt = backup_set.path, backup_set.names["gpt"]
    proc = cli("export", set_dir, tmp_path / "x.vhdx", check=None)
    assert proc.returncode == 2 and "choose one with --disk" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not list(tmp_path.iterdir())
    raw = image_raw(set_dir / f"{gpt}.img.zst", tmp_path / "gpt.raw")
    out = tmp_path / "gpt.vhdx"
    summary = json.loads(cli("export", "--json", set_dir, out, "--disk", gpt).stdout)
    identity = summary["identity"]
    assert identity["backup_set"] == {"dir": str(set_dir), "disk": gpt}
    assert identity["used_only"] is True and identity["image_digests"]
    assert identity["partition_table"]["scheme"] == "gpt"
    assert identity["partition_table"]["disk_id"].lower() == GPT_DISK_GUID
    assert summary["virtual_size"] == backup_set.disks["gpt"].size
    # used-only: free space inside the filesystems is neither read nor stored
    assert summary["read_bytes"] < backup_set.disks["gpt"].size * 0.8
    check_all_readers("vhdx", out, raw)


def test_partitions_of_a_used_only_disk_image_in_a_set(backup_set: BackupSet, tmp_path: Path) -> None:
    """``--set-dir DIR --disk NAME --partition N``: the partition alone, whole for its filesystem's tools."""
    set_dir = backup_set.path
    for kind, fmt in (("gpt", "qcow2"), ("mbr", "vmdk")):
        name, disk = backup_set.names[kind], backup_set.disks[kind]
        image = set_dir / f"{name}.img.zst"
        with open_image(str(image)) as reader:
            parts = read_partitions(reader)
            raw = image_raw(image, tmp_path / f"{kind}.raw")
            for number, (family, expected) in disk.filesystems.items():
                part = parts.get(number)
                out = tmp_path / f"{kind}-p{number}.{fmt}"
                summary = json.loads(cli("export", "--json", "--set-dir", set_dir, "--disk", name,
                                         "--partition", str(number), out).stdout)
                assert summary["identity"]["window"]["partition"] == number
                assert summary["virtual_size"] == part.length
                qemu_compare(fmt, _slice(raw, part.offset, part.length, tmp_path / "slice.raw"), out)
                # the filesystem inside, through its own tools, from a raw export of the partition
                flat = tmp_path / f"{kind}-p{number}.raw"
                cli("export", set_dir, flat, "--disk", name, "--partition", str(number))
                assert os.path.getsize(flat) == part.length
                assert fsck(flat, family).returncode == 0, fsck(flat, family).stdout
                streams = tuple(k for k in expected if ":" in k)  # NTFS alternate data streams
                assert read_files(flat, family, streams) == expected, (kind, number)
                flat.unlink()
                out.unlink()
        raw.unlink()


def test_image_on_s3(s3server: S3Server, tmp_path: Path) -> None:
    """An ``s3://`` image (split into parts there too) exported in place: no download first."""
    bucket = s3server.bucket("iu-export")
    raw = tmp_path / "src.raw"
    raw.write_bytes(mixed_bytes(10 * MiB + 512, seed=5))
    url = f"s3://{bucket}/disk.img.zst"
    iu(s3server, "image", "--chunk-size", "256K", raw, url)
    out = tmp_path / "s3.vhdx"
    before = s3server.bytes_sent(bucket)
    summary = json.loads(iu(s3server, "export", "--json", url, out).stdout)
    assert summary["identity"]["image"] == [url]
    check_all_readers("vhdx", out, raw)
    assert s3server.bytes_sent(bucket) - before < 2 * raw.stat().st_size  # each frame fetched once, roughly
    split = f"s3://{bucket}/split.img.zst"
    iu(s3server, "image", "--split-size", "3M", "--chunk-size", "256K", raw, split)
    iu(s3server, "export", split, tmp_path / "s3.qcow2")
    check_all_readers("qcow2", tmp_path / "s3.qcow2", raw)
    missing = iu(s3server, "export", f"s3://{bucket}/nothing.img.zst", tmp_path / "n.vhd", check=4)
    assert "nothing.img.zst" in one_line_error(missing)
    assert not (tmp_path / "n.vhd").exists() and not (tmp_path / "n.vhd.partial").exists()


def test_a_logical_volume_in_two_segments(tmp_path: Path) -> None:
    """``--volume vg-lv``: an LVM2 LV whose segments lie apart on the PV, exported from a used-only image as
    the LV's own disk (every reader sees the LV's bytes, its ext4 checks clean and holds its files); a name
    that is not there is refused with the names there are."""
    from conftest import need_root, need_tools
    from linuxfs import lfsbuild

    need_root()
    need_tools("pvcreate", "losetup", "mkfs.xfs", "qemu-img")
    vol = lfsbuild.make_lvm(tmp_path / "pv.raw", 160, None)
    image = tmp_path / "pv.img.zst"
    cli("image", "--used-only", vol.path, image)
    raw = image_raw(image, tmp_path / "pv-back.raw")  # what the used-only image holds
    lv = lfsbuild.extract_lv(raw, vol.places["home"], tmp_path / "home.lv")
    out = tmp_path / "home.qcow2"
    summary = json.loads(cli("export", "--json", image, out, "--volume", f"{vol.vg}-home").stdout)
    assert summary["identity"]["window"]["volume"] == f"{vol.vg}-home"
    assert summary["virtual_size"] == vol.places["home"].size
    check_all_readers("qcow2", out, lv)
    assert fsck(lv, "ext").returncode == 0 and read_files(lv, "ext") == vol.expected["home"]
    wrong = cli("export", image, tmp_path / "x.qcow2", "--volume", "vg0-root", check=2)
    assert f"{vol.vg}-home" in wrong.stderr and len(wrong.stderr.splitlines()) == 1, wrong.stderr
    assert not (tmp_path / "x.qcow2").exists()
    # a rescued image of the PV with bytes lost in the LV's second segment: named in the LV's own offsets
    (_first, first_len), (second, _n) = vol.places["home"].pieces
    rescued_image(vol.path, tmp_path / "rescued.img", (second + 4096, 8192))
    proc = cli("export", "--json", tmp_path / "rescued.img", tmp_path / "r.qcow2", "--volume", f"{vol.vg}-home")
    assert json.loads(proc.stdout)["bad_ranges"] == [{"offset": first_len + 4096, "length": 8192}], proc.stdout
