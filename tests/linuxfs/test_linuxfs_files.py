"""``ls`` / ``extract`` / ``webdav`` from XFS, Btrfs (subvolumes) and LVM2 logical volumes; LVs as NBD
exports and FUSE files.  Every file must come back as the kernel wrote it."""

# ruff: noqa: F811  (pytest fixtures are imported from lfscases and requested by name)
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lfsbuild
import pytest
from lfscases import Volume, lvm_volume, require, tree_dir, volume  # noqa: F401

import fsbuild
from conftest import cli, need_tools

LONG_TARGET = "/" + "/".join(f"component-{i:02d}" for i in range(30))  # a remote (out of inode) symlink


@pytest.fixture(scope="module")
def xfs_files(tmp_path_factory: pytest.TempPathFactory, tree_dir: Path) -> tuple[Path, dict[str, str]]:
    """XFS v5 with a large directory, unwritten extents, reflinked copies and a long symlink."""
    require("xfs")
    path = tmp_path_factory.mktemp("xfsfiles") / "xfs.img"
    fsbuild.random_image(path, 64, 21)
    lfsbuild.run("mkfs.xfs", "-q", "-f", "--unsupported", "-m", "reflink=1", path)
    with lfsbuild.mounted(path) as mnt:
        shutil.copytree(tree_dir, mnt / "tree", symlinks=True)
        big = mnt / "bigdir"
        big.mkdir()
        for i in range(700):
            (big / f"entry-with-a-long-name-{i:04d}.txt").write_text(f"{i}\n")
        with open(mnt / "prealloc.bin", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 3 << 20)  # unwritten extents: must read as zeros
            f.seek(1 << 20)
            f.write(b"written in the middle" * 1000)
        lfsbuild.run("cp", "--reflink=always", mnt / "tree" / "large.bin", mnt / "reflinked.bin")
        os.symlink(LONG_TARGET, mnt / "long-link")
        os.sync()
        expected = lfsbuild.hash_regular(mnt)
    return path, expected


@pytest.fixture(scope="module")
def btrfs_files(tmp_path_factory: pytest.TempPathFactory, tree_dir: Path) -> tuple[Path, dict[str, str]]:
    """Btrfs with subvolumes (nested, and a snapshot), zstd-compressed and inline files, preallocation."""
    require("btrfs")
    path = tmp_path_factory.mktemp("btrfsfiles") / "btrfs.img"
    fsbuild.random_image(path, 128, 22)
    lfsbuild.run("mkfs.btrfs", "-q", "-f", path)
    with lfsbuild.loop(path) as dev:
        mnt = Path(os.path.dirname(path)) / "mnt"
        mnt.mkdir()
        lfsbuild.run("mount", "-o", "compress=zstd", dev, mnt)
        try:
            shutil.copytree(tree_dir, mnt / "top", symlinks=True)
            lfsbuild.run("btrfs", "subvolume", "create", mnt / "sub1")
            (mnt / "sub1" / "compressible.txt").write_text("the same line again and again\n" * 40000)
            (mnt / "sub1" / "inline.txt").write_text("small enough to live in the tree\n")
            with open(mnt / "sub1" / "prealloc.bin", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, 1 << 20)
                f.seek(300_000)
                f.write(os.urandom(5000))
            lfsbuild.run("btrfs", "subvolume", "create", mnt / "sub1" / "inner")
            (mnt / "sub1" / "inner" / "deep.bin").write_bytes(os.urandom(70_000))
            lfsbuild.run("btrfs", "subvolume", "snapshot", mnt / "sub1", mnt / "snap")
            (mnt / "snap" / "only-in-snap.txt").write_text("snapshot\n")
            os.sync()
            expected = lfsbuild.hash_regular(mnt)
        finally:
            lfsbuild.run("umount", mnt)
            mnt.rmdir()
    return path, expected


def extracted(tmp: Path, *args: str | Path) -> dict[str, str]:
    dest = tmp / "out"
    if dest.exists():
        shutil.rmtree(dest)
    cli("extract", *args, dest)
    return lfsbuild.hash_regular(dest)


def test_xfs_extract_everything(xfs_files: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path, expected = xfs_files
    assert extracted(tmp_path, path, "/") == expected
    out = cli("ls", "-l", path, "/").stdout
    assert f"long-link -> {LONG_TARGET}" in out
    prealloc = (tmp_path / "out" / "prealloc.bin").read_bytes()
    assert prealloc[: 1 << 20] == bytes(1 << 20) and prealloc[2 << 20 :] == bytes(1 << 20)
    listing = json.loads(cli("ls", "--json", path, "/bigdir").stdout)
    assert len(listing) == 700


@pytest.mark.parametrize("case_id", ["xfs-1k-2ag-deep", "xfs-v4", "xfs-nrext64", "btrfs-default",
                                     "btrfs-xxhash-64k-nodes"])
def test_extract_aged_volumes(case_id: str, volume: Callable[[str], Volume], tree_dir: Path, tmp_path: Path) -> None:
    """The deep case has 4 KiB directory blocks over 1 KiB filesystem blocks; v4 has no CRCs; nrext64 has
    64-bit extent counters in its inodes; the xxhash case checksums its 64 KiB nodes with xxhash64."""
    vol = volume(case_id)
    assert extracted(tmp_path, vol.path, "/") == vol.expected


def test_btrfs_subvolumes(btrfs_files: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path, expected = btrfs_files
    assert extracted(tmp_path, path, "/") == expected  # nested subvolumes appear as directories
    sub = extracted(tmp_path, "--subvolume", "sub1", path, "/")
    assert sub == {k[len("sub1/"):]: v for k, v in expected.items() if k.startswith("sub1/")}
    listing = {e["name"]: e for e in json.loads(cli("ls", "--json", path, "/").stdout)}
    assert {"top", "sub1", "snap"} <= set(listing)
    inner = json.loads(cli("ls", "--json", "--subvolume", "sub1", path, "/").stdout)
    assert {e["name"] for e in inner} >= {"compressible.txt", "inline.txt", "inner"}
    ids = re.findall(r"(\d+) \((snap)\)", cli("ls", "--subvolume", "nope", path, "/", check=4).stderr)
    assert ids, "the error lists the subvolumes with their ids"
    snap = json.loads(cli("ls", "--json", "--subvolume", ids[0][0], path, "/").stdout)
    assert "only-in-snap.txt" in {e["name"] for e in snap}
    assert cli("ls", "--subvolume", "sub1", tmp_path / "out" / "top" / "hello.txt", "/", check=None).returncode != 0


def test_btrfs_default_subvolume_is_followed(btrfs_files: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path = tmp_path / "copy.img"
    shutil.copyfile(btrfs_files[0], path)
    with lfsbuild.mounted(path) as mnt:
        sid = re.search(r"ID (\d+) .* path sub1$", lfsbuild.run("btrfs", "subvolume", "list", mnt), re.M)
        assert sid
        lfsbuild.run("btrfs", "subvolume", "set-default", sid[1], mnt)
    names = {e["name"] for e in json.loads(cli("ls", "--json", path, "/").stdout)}
    assert "compressible.txt" in names and "top" not in names
    names = {e["name"] for e in json.loads(cli("ls", "--json", "--subvolume", "5", path, "/").stdout)}
    assert "top" in names


def test_lvm_files_from_a_used_only_image(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    vol = lvm_volume
    img = tmp_path / "pv.img.zst"
    cli("image", "--used-only", vol.path, img)
    for name in ("data", "home"):
        assert extracted(tmp_path, "--lv", f"{vol.vg}/{name}", img, "/") == vol.expected[name]
    err = cli("ls", img, "/", check=2).stderr
    assert "--lv VG/LV" in err and f"{vol.vg}/data" in err
    assert "not found" in cli("ls", "--lv", f"{vol.vg}/nope", img, "/", check=4).stderr
    assert "no NTFS, ext2/3/4" in cli("ls", "--lv", f"{vol.vg}/raw", img, "/", check=4).stderr


@pytest.fixture(scope="module")
def lvm_disk(lvm_volume: lfsbuild.LvmVolume, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk whose partition 1 is the LVM2 PV."""
    need_tools("sgdisk")
    disk = tmp_path_factory.mktemp("lvmdisk") / "disk.raw"
    pv = lvm_volume.path.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(pv + (2 << 20))
    lfsbuild.run("sgdisk", "-n", f"1:2048:+{pv // 512}", "-t", "1:8e00", disk)
    with open(lvm_volume.path, "rb") as src, open(disk, "r+b") as out:
        out.seek(1 << 20)
        shutil.copyfileobj(src, out, 1 << 20)
    return disk


def test_lvm_inside_a_partition(lvm_volume: lfsbuild.LvmVolume, lvm_disk: Path, tmp_path: Path) -> None:
    vol = lvm_volume
    got = extracted(tmp_path, "--partition", "1", "--lv", f"{vol.vg}/home", lvm_disk, "/")
    assert got == vol.expected["home"]
    part = tmp_path / "part.raw"
    with open(lvm_disk, "rb") as src, open(part, "wb") as out:
        src.seek(1 << 20)
        out.write(src.read(vol.path.stat().st_size))
    lfsbuild.lvm_check(part, vol.vg)


def _serve(image: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", str(image), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"at (nbd://\S+/) \(exports: (.*)\)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield m[1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_lvm_volumes_as_nbd_exports_and_fuse_files(lvm_volume: lfsbuild.LvmVolume, lvm_disk: Path,
                                                   tmp_path: Path) -> None:
    need_tools("nbdinfo", "nbdcopy", "fusermount3")
    vol = lvm_volume
    img = tmp_path / "disk.img.zst"
    cli("image", lvm_disk, img)
    mapper = f"{vol.vg}-data"
    served = _serve(img)
    url = next(served)
    try:
        listing = lfsbuild.run("nbdinfo", "--list", url)
        assert mapper in listing and "p1" in listing
        lfsbuild.run("nbdcopy", url + mapper, tmp_path / "data.lv")
    finally:
        served.close()
    expect = lfsbuild.extract_lv(vol.path, vol.places["data"], tmp_path / "data.expected")
    assert lfsbuild.read_tree(tmp_path / "data.lv") == lfsbuild.read_tree(expect) == vol.expected["data"]
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    cli("mount", img, mnt)
    try:
        names = sorted(os.listdir(mnt))
        assert f"{mapper}.raw" in names and f"{vol.vg}-home.raw" in names, names
        with open(mnt / f"{mapper}.raw", "rb") as f, open(expect, "rb") as g:
            assert f.read(4 << 20) == g.read(4 << 20)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        for _ in range(100):
            if not os.path.ismount(mnt):
                break
            time.sleep(0.1)


def test_webdav_serves_a_logical_volume(lvm_volume: lfsbuild.LvmVolume) -> None:
    need_tools("curl")
    vol = lvm_volume
    name, digest = next((k, v) for k, v in vol.expected["data"].items() if "/" not in k and k.endswith(".txt"))
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "webdav", "--lv", f"{vol.vg}/data",
                             str(vol.path), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"(http://[^ ;]+/)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.stderr and proc.poll() is not None else "no URL"
        body = subprocess.run(["curl", "-s", "--max-time", "30", m[1] + name], capture_output=True, check=True).stdout
    finally:
        proc.terminate()
        proc.wait(20)
    assert hashlib.sha256(body).hexdigest() == digest


def test_damaged_names_the_files_of_a_logical_volume(lvm_volume: lfsbuild.LvmVolume, lvm_disk: Path,
                                                       tmp_path: Path) -> None:
    """``ls --damaged --lv`` (and inside a partition): a corrupt chunk under a file of the two-segment LV is
    traced through the LV's segments and the partition to that file; it was read as if the LV began at the
    image's byte 0 (naming whatever file lay there, or nothing)."""
    from imagetools import damage_chunk
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems.lvm_source import open_lv
    from imaging_utility.filesystems.tree import open_tree

    vol, chunk_size = lvm_volume, 64 * 1024
    place = vol.places["home"]
    with FileSource(str(vol.path)) as pv:
        tree = open_tree(open_lv(pv, f"{vol.vg}/home"))
        runs = [(e.path, r) for e in tree.walk("/") if e.type == "file" for r in tree.data_runs(e.path)]
    def to_pv(lv_off: int, n: int) -> int | None:
        """The PV offset of LV range ``[lv_off, lv_off + n)`` by LVM's own report; None across segments."""
        at = 0
        for pv_off, length in place.pieces:
            if at <= lv_off and lv_off + n <= at + length:
                return pv_off + lv_off - at
            at += length
        return None

    def chunk_in(run: tuple[int, int, int]) -> int | None:
        """The first whole chunk inside ``run``, as a PV offset."""
        pv_off = to_pv(run[1], run[2])
        first = None if pv_off is None else -(-pv_off // chunk_size) * chunk_size
        return first if pv_off is not None and first is not None and first + chunk_size <= pv_off + run[2] else None

    path, run = max(((p, r) for p, r in runs if chunk_in(r) is not None), key=lambda pr: pr[1][1])  # the last
    foff, pv_off, first = run[0], to_pv(run[1], run[2]), chunk_in(run)
    assert pv_off is not None and first is not None
    for where, base, extra in (("pv", vol.path, ()), ("disk", lvm_disk, ("--partition", "1"))):
        shift = 0 if where == "pv" else 1 << 20
        img = tmp_path / f"{where}.img"
        cli("image", "--chunk-size", "64K", base, img)
        damage_chunk(img, (first + shift) // chunk_size)
        found = json.loads(cli("ls", "--damaged", "--json", *extra, "--lv", f"{vol.vg}/home", img).stdout)
        lost = foff + first - pv_off
        assert found == [{"path": path, "cause": "corrupt", "lost": [{"offset": lost, "length": chunk_size}],
                          "lost_bytes": chunk_size}], (where, found)
