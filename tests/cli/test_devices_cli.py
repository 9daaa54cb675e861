"""Issue «real devices» end to end through the CLI: rescue, identity, mounted sources, throughput cap."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from devices.devhelpers import eio_fuse, mkfs_ext4, mounted, random_file
from imagetools import file_sha256

SECTOR = 512


@pytest.fixture
def failing_disk(tmp_path: Path) -> tuple[Path, bytes, set[int]]:
    data = random_file(tmp_path / "backing.raw", 6 << 20, seed=3)
    bad = {100, 101, 102, 5000, 9000, 12287}
    return tmp_path / "backing.raw", data, bad


def test_rescue_images_around_bad_sectors(tmp_path: Path, failing_disk: tuple[Path, bytes, set[int]]) -> None:
    backing, data, bad = failing_disk
    with eio_fuse(backing, tmp_path / "mnt", bad, SECTOR) as disk:
        proc = cli("image", "--chunk-size", "256K", disk, tmp_path / "plain.img", check=6)
        assert f"at byte {100 * SECTOR}" in proc.stderr and "sector 100" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        summary = cli("image", "--rescue", "--retries", "2", "--chunk-size", "256K", "--json", disk,
                      tmp_path / "r.img", check=3)
        assert json.loads(summary.stdout)["bad_sectors"] == len(bad)
    info = json.loads(cli("info", "--json", tmp_path / "r.img").stdout)
    expect = [{"offset": 100 * SECTOR, "length": 3 * SECTOR}, {"offset": 5000 * SECTOR, "length": SECTOR},
              {"offset": 9000 * SECTOR, "length": SECTOR}, {"offset": 12287 * SECTOR, "length": SECTOR}]
    assert info["bad_ranges"] == expect
    assert info["layout_bytes"]["unreadable"] == 6 * SECTOR
    verify = cli("verify", tmp_path / "r.img")
    assert "unreadable" in verify.stdout
    restored = cli("restore", tmp_path / "r.img", tmp_path / "out.raw")
    assert "unreadable" in restored.stderr
    out = bytearray((tmp_path / "out.raw").read_bytes())
    expected = bytearray(data)
    for s in bad:
        expected[s * SECTOR : (s + 1) * SECTOR] = bytes(SECTOR)
    assert out == expected


def test_rescue_resume_keeps_bad_ranges(tmp_path: Path, failing_disk: tuple[Path, bytes, set[int]]) -> None:
    backing, _, bad = failing_disk
    with eio_fuse(backing, tmp_path / "mnt", bad, SECTOR) as disk:
        args = ["--rescue", "--chunk-size", "64K", "--threads", "1"]
        cli("image", *args, disk, tmp_path / "ref.img", check=3)
        full = (tmp_path / "ref.img").read_bytes()
        (tmp_path / "r.img").write_bytes(full[: len(full) * 2 // 3])
        cli("image", *args, "--resume", disk, tmp_path / "r.img", check=3)
    a = json.loads(cli("info", "--json", tmp_path / "r.img").stdout)
    b = json.loads(cli("info", "--json", tmp_path / "ref.img").stdout)
    assert a["bad_ranges"] == b["bad_ranges"] and len(a["bad_ranges"]) == 4
    assert a["digests"] == b["digests"]


def test_file_identity_in_header_and_resume_check(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    random_file(src, 2 << 20)
    cli("image", src, tmp_path / "a.img")
    ident = json.loads(cli("info", "--json", tmp_path / "a.img").stdout)["source"]
    assert ident["kind"] == "file" and ident["path"] == str(src) and ident["size"] == 2 << 20
    assert ident["mtime"].endswith("Z") and ident["host"] and ident["tool_version"]
    raw = (tmp_path / "a.img").read_bytes()
    (tmp_path / "a.img").write_bytes(raw[: len(raw) // 2])
    time.sleep(0.01)
    src.write_bytes(src.read_bytes())  # same size, new mtime: the source changed
    proc = cli("image", "--resume", src, tmp_path / "a.img", check=10)
    assert "mtime" in proc.stderr


def test_loop_device_identity_4k_sectors_roundtrip(tmp_path: Path, loopdev: object) -> None:
    need_root()
    backing = tmp_path / "4k.raw"
    random_file(backing, 8 << 20)
    dev = loopdev(backing, sector_size=4096)  # type: ignore[operator]
    cli("image", "--direct", dev, tmp_path / "4k.img")
    info = json.loads(cli("info", "--json", tmp_path / "4k.img").stdout)
    assert info["sector_size"] == 4096
    ident = info["source"]
    assert ident["kind"] == "block-device" and ident["logical_sector_size"] == 4096
    assert ident["backing_file"] == str(backing)
    cli("restore", tmp_path / "4k.img", tmp_path / "back.raw")
    assert file_sha256(tmp_path / "back.raw") == file_sha256(backing)


def test_mounted_rw_source_refused(tmp_path: Path, loopdev: object) -> None:
    need_root()
    need_tools("mkfs.ext4")
    backing = tmp_path / "fs.raw"
    with open(backing, "wb") as fh:
        fh.truncate(16 << 20)
    dev = loopdev(backing)  # type: ignore[operator]
    mkfs_ext4(dev)
    with mounted(dev, tmp_path / "m"):
        proc = cli("image", dev, tmp_path / "x.img", check=9)
        assert "--allow-mounted" in proc.stderr
        proc = cli("image", "--allow-mounted", dev, tmp_path / "x.img")
        assert "inconsistent" in proc.stderr
        cli("restore", "--yes", "--force", tmp_path / "x.img", dev, check=9)
    with mounted(dev, tmp_path / "m", read_only=True):
        proc = cli("image", "--force", dev, tmp_path / "x.img")
        assert "read-only" in proc.stderr or "safe" in proc.stderr


def test_max_throughput_holds_within_10_percent(tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    block = b"x" * (1 << 20)
    with open(src, "wb") as fh:  # not sparse: holes of a sparse file are never read, so never throttled
        for _ in range(500):
            fh.write(block)
    start = time.monotonic()
    out = json.loads(cli("image", "--json", "--hash", "none", "--level", "1", "--max-throughput", "50M",
                         src, tmp_path / "t.img").stdout)
    wall = time.monotonic() - start
    rate = (500 << 20) / out["seconds"]
    assert abs(rate - (50 << 20)) / (50 << 20) < 0.10, (rate / 2**20, wall)


def test_partitioned_loop_device_image(tmp_path: Path, loopdev: object) -> None:
    need_root()
    need_tools("sfdisk")
    backing = tmp_path / "disk.raw"
    random_file(backing, 8 << 20)
    subprocess.run(["sfdisk", "-q", str(backing)], input=b"label: gpt\n,2M\n,\n", check=True)
    dev = loopdev(backing, partscan=True)  # type: ignore[operator]
    cli("image", dev, tmp_path / "d.img")
    ident = json.loads(cli("info", "--json", tmp_path / "d.img").stdout)["source"]
    assert ident["partition_table"]["type"] == "gpt" and ident["whole_disk"]
    cli("restore", tmp_path / "d.img", tmp_path / "back.raw")
    assert file_sha256(tmp_path / "back.raw") == file_sha256(backing)


def test_used_only_rescue_of_a_volume_whose_last_sectors_fail(tmp_path: Path) -> None:
    """The RAID metadata probes read the source's last sectors, the first to fail on many dying disks: an
    unreadable end is no RAID superblock there, not the end of the rescue (it names the bad sectors)."""
    need_root()
    backing = tmp_path / "vol.raw"
    random_file(backing, 16 << 20, seed=4)
    mkfs_ext4(backing)
    sectors = (16 << 20) // SECTOR
    bad = set(range(sectors - 256, sectors))  # the last 128 KiB: md 0.90, md 1.0, IMSM and DDF all lie there
    with eio_fuse(backing, tmp_path / "mnt", bad, SECTOR) as disk:
        proc = cli("image", "--used-only", "--rescue", "--json", disk, tmp_path / "v.img", check=None)
        assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr
        shown = cli("info", disk)
        assert "ext4" in shown.stdout
    cli("restore", tmp_path / "v.img", tmp_path / "back.raw")
    fsck = subprocess.run(["e2fsck", "-f", "-n", str(tmp_path / "back.raw")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
