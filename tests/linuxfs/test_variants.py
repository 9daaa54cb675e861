"""Odd-but-valid filesystem options, each made by its own mkfs over random bytes, aged, then: ``image
--used-only`` and ``restore`` give a volume that its checker finds clean with every file identical
(kernel mount), and ``extract`` from the image gives the same files.

The whole sweep runs under ``-m slow`` (about 5 minutes); the options no other test covers run in the
default suite.  What the sweep found: nothing to fix (the figures are in the round's closing note).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import lfsbuild
import pytest
from lfscases import require

import fsbuild
from conftest import cli, need_root, need_tools

# name: (kind, mkfs options, mount options, in the default suite)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "xfs-1k-blocks": ("xfs", ("-b", "size=1024"), "", False),
    "xfs-4k-sectors": ("xfs", ("-s", "size=4096"), "", True),
    "xfs-no-reflink-no-rmap": ("xfs", ("-m", "reflink=0,rmapbt=0"), "", False),
    "xfs-rmapbt": ("xfs", ("-m", "rmapbt=1"), "", True),
    "xfs-no-finobt-no-sparse": ("xfs", ("-m", "finobt=0", "-i", "sparse=0"), "", False),
    "xfs-nrext64-bigtime": ("xfs", ("-i", "nrext64=1", "-m", "bigtime=1"), "", True),
    "xfs-64k-dir-blocks": ("xfs", ("-n", "size=65536"), "", True),
    "xfs-2k-inodes": ("xfs", ("-i", "size=2048"), "", False),
    "xfs-stripe": ("xfs", ("-d", "su=64k,sw=4,agcount=2"), "", False),
    "xfs-smaller-than-device": ("xfs", ("-d", "size=320m"), "", False),
    "btrfs-nodesize-64k": ("btrfs", ("-n", "65536"), "", True),
    "btrfs-nodesize-4k": ("btrfs", ("-n", "4096"), "", False),
    "btrfs-no-skinny-metadata": ("btrfs", ("-O", "^skinny-metadata"), "", True),
    "btrfs-explicit-holes": ("btrfs", ("-O", "^no-holes"), "", True),
    "btrfs-no-free-space-tree": ("btrfs", ("-R", "^free-space-tree"), "", False),
    "btrfs-compress-force-zlib9": ("btrfs", (), "compress-force=zlib:9", False),
    "btrfs-compress-lzo": ("btrfs", (), "compress=lzo", False),
    "btrfs-nodatacow": ("btrfs", (), "nodatacow", True),
    "btrfs-smaller-than-device": ("btrfs", ("-b", "200m"), "", False),
    "ext4-bigalloc": ("ext4", ("-O", "bigalloc", "-C", "65536"), "", False),
    "ext4-ea-inode-large-dir": ("ext4", ("-O", "ea_inode,large_dir"), "", True),
    "ext4-no-journal": ("ext4", ("-O", "^has_journal"), "", False),
    "ext4-1k-inodes": ("ext4", ("-I", "1024", "-N", "20000"), "", False),
    "xfs-agcount-2-big-log": ("xfs", ("-d", "agcount=2", "-l", "size=64m"), "", False),
    "xfs-agcount-6": ("xfs", ("-d", "agcount=6"), "", False),
    "btrfs-single-profiles": ("btrfs", ("-m", "single", "-d", "single"), "", False),
    "btrfs-data-dup": ("btrfs", ("-d", "dup"), "", False),
    "btrfs-compress-force-zstd15": ("btrfs", (), "compress-force=zstd:15", False),
    "ext4-1k-blocks": ("ext4", ("-b", "1024"), "", False),
    "ext4-32bit-no-flex-bg": ("ext4", ("-O", "^64bit,^flex_bg"), "", False),
    "ext4-as-ext3": ("ext4", ("-O", "^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^64bit,^metadata_csum"),
                     "", False),
    "ext4-orphan-file": ("ext4", ("-O", "orphan_file"), "", False),  # this kernel has no quota, no unicode
    "ext4-sparse-super2": ("ext4", ("-O", "sparse_super2,^resize_inode"), "", False),
    "ext4-encrypt-verity-stable-inodes": ("ext4", ("-O", "encrypt,verity,stable_inodes"), "", False),
    "ext4-128-byte-inodes": ("ext4", ("-I", "128"), "", False),
}
SIZE_MIB = {"xfs": 400, "btrfs": 300, "ext4": 300}  # recent mkfs.xfs refuses a volume under 300 MB


def _populate(mnt: Path, seed: int) -> None:
    """Files of every size class (empty, inline-sized, one block, many extents), a third deleted and
    more written, a sparse file, a hard link, a symlink and a directory of 2,000 names."""
    rnd = random.Random(seed)

    def write(path: Path, n: int) -> None:
        path.write_bytes(rnd.randbytes(n) if rnd.random() < 0.6 else b"line %d\n" % n * (n // 8 + 1))

    for d in range(4):
        (mnt / f"d{d}" / "sub").mkdir(parents=True)
        for i in range(60):
            write(mnt / f"d{d}" / f"f{i}", rnd.choice([0, 1, 60, 3000, 4096, 5000, 70_000, 300_000, 900_000]))
    os.sync()
    for d in range(4):
        for i in range(0, 60, 3):
            (mnt / f"d{d}" / f"f{i}").unlink()
        for i in range(20):
            write(mnt / f"d{d}" / "sub" / f"g{i}", rnd.choice([10, 8000, 200_000, 700_000]))
    with open(mnt / "sparse", "wb") as f:
        f.seek(20_000_000)
        f.write(b"end")
        f.seek(5_000_000)
        f.write(rnd.randbytes(100_000))
    os.link(mnt / "d0" / "f1", mnt / "hardlink")
    os.symlink("d0/f1", mnt / "symlink")
    (mnt / "names").mkdir()
    for i in range(2000):
        (mnt / "names" / f"n{i:05d}").write_text(str(i))
    os.sync()


def _mkfs(kind: str, opts: tuple[str, ...], path: Path) -> None:
    cmd = {"xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"],
           "ext4": ["mke2fs", "-q", "-F", "-t", "ext4"]}
    lfsbuild.run(*cmd[kind], *opts, path)


def _case(name: str, tmp_path: Path) -> None:
    kind, opts, mount_opts, _ = VARIANTS[name]
    if kind == "ext4":
        need_root()
        need_tools("mke2fs", "e2fsck", "losetup", "mount")
    else:
        require(kind)
    vol = tmp_path / "vol.img"
    fsbuild.random_image(vol, SIZE_MIB[kind], 61)
    _mkfs(kind, opts, vol)
    with lfsbuild.loop(vol) as dev:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        lfsbuild.run("mount", *(("-o", mount_opts) if mount_opts else ()), dev, mnt)
        try:
            _populate(mnt, len(name))
            expected = lfsbuild.hash_regular(mnt)
        finally:
            lfsbuild.run("umount", mnt)
    image = tmp_path / "vol.img.zst"
    cli("image", "--used-only", vol, image)
    restored = tmp_path / "restored.img"
    cli("restore", image, restored)
    vol.unlink()
    fsck = lfsbuild.check(restored, kind)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert lfsbuild.read_tree(restored) == expected
    restored.unlink()
    cli("extract", image, "/", tmp_path / "out")
    assert lfsbuild.hash_regular(tmp_path / "out") == expected
    assert os.readlink(tmp_path / "out" / "symlink") == "d0/f1"
    assert os.stat(tmp_path / "out" / "hardlink").st_ino == os.stat(tmp_path / "out" / "d0" / "f1").st_ino


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v[3]])
def test_variant(name: str, tmp_path: Path) -> None:
    _case(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v[3]])
def test_variant_sweep(name: str, tmp_path: Path) -> None:
    _case(name, tmp_path)
