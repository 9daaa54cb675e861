"""Images read in place from S3: NBD (nbdcopy, qemu-img compare), FUSE + loop mount, ls/extract fetching
little of a large object, restore, verify."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_root, need_tools
from serve.serve_helpers import Disk, _build_gpt_disk, part_bytes
from storage.s3helpers import iu, popen
from storage.s3server import S3Server

MiB = 1 << 20


@pytest.fixture(scope="module")
def gpt_disk() -> Disk:
    """The server tests' 48 MiB GPT disk (NTFS + ext4 with files)."""
    need_tools("sgdisk", "mkntfs", "ntfscp", "mkfs.ext4")
    return _build_gpt_disk()


@pytest.fixture(scope="module")
def disk_url(s3server: S3Server, gpt_disk: Disk) -> str:
    bucket = s3server.bucket("iu-read")
    url = f"s3://{bucket}/gpt/disk.img.zst"
    iu(s3server, "image", "--chunk-size", "256K", gpt_disk.path, url)
    return url


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_serve_proxy_from_s3_read_by_nbdcopy_and_qemu_img(s3server: S3Server, disk_url: str, gpt_disk: Disk,
                                                          procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    need_tools("nbdcopy", "qemu-img")
    proc = popen(s3server, "serve-proxy", "--port", "0", disk_url)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" at (\S+) ", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    uri = match.group(1)
    subprocess.run(["nbdcopy", uri, str(tmp_path / "copy.raw")], check=True, timeout=120)
    assert (tmp_path / "copy.raw").read_bytes() == gpt_disk.path.read_bytes()
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, str(gpt_disk.path)], check=True,
                   timeout=120, capture_output=True)
    subprocess.run(["nbdcopy", uri + "p2", str(tmp_path / "p2.raw")], check=True, timeout=120)
    assert (tmp_path / "p2.raw").read_bytes() == part_bytes(gpt_disk, 2)


def test_restore_and_verify_from_s3(s3server: S3Server, disk_url: str, gpt_disk: Disk,
                                    tmp_path: Path) -> None:
    iu(s3server, "restore", disk_url, tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == gpt_disk.path.read_bytes()
    assert "OK" in iu(s3server, "verify", disk_url).stdout


def _wait_mount(path: Path, present: bool = True) -> None:
    deadline = time.monotonic() + 60
    while os.path.ismount(path) != present:
        assert time.monotonic() < deadline, f"{path} mounted={not present} after 60 s"
        time.sleep(0.05)


def test_mount_s3_image_then_loop_mount_a_partition(s3server: S3Server, disk_url: str, gpt_disk: Disk,
                                                    tmp_path: Path) -> None:
    need_root()
    need_tools("fusermount3", "mount", "umount")
    fuse_dir, ext_dir = tmp_path / "fuse", tmp_path / "ext"
    fuse_dir.mkdir()
    ext_dir.mkdir()
    try:
        out = iu(s3server, "mount", disk_url, fuse_dir, timeout=120).stdout
        assert "mounted at" in out
        _wait_mount(fuse_dir)
        assert sorted(os.listdir(fuse_dir)) == ["disk.raw", "p1.raw", "p2.raw"]
        subprocess.run(["mount", "-o", "ro,loop", str(fuse_dir / "p2.raw"), str(ext_dir)], check=True,
                       capture_output=True, timeout=60)
        for name, content in gpt_disk.files.items():
            assert (ext_dir / name).read_bytes() == content
    finally:
        if os.path.ismount(ext_dir):
            subprocess.run(["umount", "-l", str(ext_dir)], check=False, capture_output=True)
        if os.path.ismount(fuse_dir):
            subprocess.run(["fusermount3", "-u", "-z", str(fuse_dir)], check=False, capture_output=True)


def test_ls_and_extract_fetch_a_small_fraction_of_a_large_image(s3server: S3Server, tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    files = tmp_path / "files"
    (files / "bulk").mkdir(parents=True)
    for i in range(12):
        (files / "bulk" / f"blob{i:02d}.bin").write_bytes(os.urandom(4 * MiB))
    wanted = os.urandom(MiB + 12345)
    (files / "docs").mkdir()
    (files / "docs" / "report.bin").write_bytes(wanted)
    vol = tmp_path / "ext4.raw"
    subprocess.run(["truncate", "-s", "72M", str(vol)], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", str(files), str(vol)], check=True)
    bucket = s3server.bucket("iu-fraction")
    url = f"s3://{bucket}/big.img.zst"
    iu(s3server, "image", vol, url)
    size = s3server.client().head_object(Bucket=bucket, Key="big.img.zst")["ContentLength"]
    assert size > 45 * MiB
    before = s3server.bytes_sent(bucket)
    listing = iu(s3server, "ls", url, "/docs").stdout
    assert "report.bin" in listing
    listed = s3server.bytes_sent(bucket) - before
    iu(s3server, "extract", url, "/docs/report.bin", tmp_path / "out")
    extracted = s3server.bytes_sent(bucket) - before - listed
    assert (tmp_path / "out" / "report.bin").read_bytes() == wanted
    assert listed < size * 0.10, (listed, size)
    assert extracted < size * 0.15, (extracted, size)  # a 1 MiB file in 1 MiB chunks of random data
    sys.stderr.write(f"object {size} bytes: ls fetched {listed}, extract {extracted}\n")
