"""Real-world volumes that used to be refused, misread or imaged with files missing.

Each is built with the filesystem's own tools (mkfs, debugfs, a kernel mount where the recipe needs
one) and checked through the CLI as a user runs it: one warning line where something had to be kept
whole or was missing, the documented exit code, and files identical to what the kernel (or the
filesystem's own tool) reads.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import allocation_map, detect

MiB = 1 << 20


def run(*cmd: str | os.PathLike[str], stdin: bytes | None = None) -> str:
    return fsbuild._run(*cmd, stdin=stdin)


@contextlib.contextmanager
def kernel_mount(path: Path, read_only: bool = True) -> Iterator[Path]:
    """The volume file on a loop device, mounted by the kernel (root)."""
    need_root()
    need_tools("losetup", "mount", "umount")
    mnt = Path(tempfile.mkdtemp(prefix="realvol-"))
    dev = run("losetup", "--find", "--show", *(["-r"] if read_only else []), path).strip()
    try:
        run("mount", "-o", "ro" if read_only else "rw", dev, mnt)
        try:
            yield mnt
        finally:
            run("umount", mnt)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        mnt.rmdir()


def warnings_of(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("warning: ") for ln in lines), stderr
    assert "Traceback" not in stderr
    return lines


def image_and_restore(vol: Path, tmp: Path) -> tuple[Path, list[str]]:
    """``image --used-only`` then ``restore`` through the CLI; the restored file and the warnings."""
    img, out = tmp / "vol.img", tmp / "restored.raw"
    proc = cli("image", "--used-only", vol, img)
    cli("restore", img, out)
    return out, warnings_of(proc.stderr)


def test_ext_groups_flagged_uninit_while_holding_data(tmp_path: Path) -> None:
    """Item 1 (the recipe at half size: 128 MiB, 60 MiB of files, 8 MiB groups): groups 3-5 flagged
    BLOCK_UNINIT (with valid checksums) while full of file data."""
    need_tools("mkfs.ext4", "debugfs", "dumpe2fs")
    vol = tmp_path / "ext4.raw"
    with open(vol, "wb") as f:  # the files are random: a block left out of the image reads back as zeros
        f.truncate(128 * MiB)
    run("mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^flex_bg", "-E", "nodiscard", vol)
    rnd = random.Random(12)
    with kernel_mount(vol, read_only=False) as mnt:
        for i in range(30):
            (mnt / f"file-{i:02d}.bin").write_bytes(rnd.randbytes(2 * MiB))
    cmds = "".join(f"set_bg {g} flags 7\nset_bg {g} checksum calc\n" for g in (3, 4, 5))
    run("debugfs", "-w", "-f", "-", vol, stdin=cmds.encode())
    groups = run("dumpe2fs", vol).split("\nGroup ")
    for g in (3, 4, 5):  # flagged "never used", yet nearly full
        text = next(t for t in groups if t.startswith(f"{g}:"))
        assert "BLOCK_UNINIT" in text and int(re.search(r"(\d+) free blocks", text).group(1)) < 2048, text
    with kernel_mount(vol) as mnt:
        expected = fsbuild.hash_dir(mnt)  # the kernel reads every file: it never looks at those flags
    assert len(expected) == 30
    restored, warnings = image_and_restore(vol, tmp_path)
    assert len(warnings) == 1, warnings
    assert "3 block groups" in warnings[0] and "group 3: flagged BLOCK_UNINIT" in warnings[0], warnings
    with kernel_mount(restored) as mnt:
        assert fsbuild.hash_dir(mnt) == expected


def _short_by_one_sector(vol: Path) -> Path:
    short = vol.with_suffix(".short")
    with open(vol, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read(os.path.getsize(vol) - 512))
    return short


def test_fat_volume_one_sector_short(tmp_path: Path) -> None:
    """Item 2: a FAT dump missing its last sector still images used-only, with one warning."""
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    expected = fsbuild.make_fat(vol, 40, None, fat_bits=32, mkfs_opts=("-s", "1"))
    short = _short_by_one_sector(vol)
    restored, warnings = image_and_restore(short, tmp_path)
    assert len(warnings) == 1 and "512 bytes earlier" in warnings[0], warnings
    assert os.path.getsize(restored) == os.path.getsize(short)
    with open(restored, "ab") as f:  # the missing sector back (zeros), for the tools that check the size
        f.write(bytes(512))
    assert fsbuild.fsck(restored, "fat").returncode == 0
    assert fsbuild.read_files(restored, "fat") == expected


def test_ntfs_volume_missing_its_backup_boot_sector(tmp_path: Path) -> None:
    """Item 2: the NTFS backup boot sector (the volume's last sector) is missing, as in many dumps."""
    need_tools(*fsbuild.TOOLS["ntfs"])
    need_root()
    vol = tmp_path / "ntfs.raw"
    expected = fsbuild.make_ntfs(vol, 16, None)
    short = _short_by_one_sector(vol)
    restored, warnings = image_and_restore(short, tmp_path)
    assert len(warnings) == 1 and "512 bytes earlier" in warnings[0], warnings
    streams = tuple(k for k in expected if ":" in k)
    assert fsbuild.read_files(restored, "ntfs", streams) == expected


def test_truncated_past_an_allocated_cluster_is_refused(tmp_path: Path) -> None:
    need_tools(*fsbuild.TOOLS["fat"])
    vol = tmp_path / "fat.raw"
    fsbuild.make_fat(vol, 40, None, fat_bits=32, mkfs_opts=("-s", "1"))
    with FileSource(str(vol)) as src:
        _info, amap = allocation_map(src)
    last = [e for e in amap if e.offset + e.length < amap.size - MiB][-1]  # the last file data
    cut = tmp_path / "cut.raw"
    cut.write_bytes(vol.read_bytes()[: last.offset + last.length - 512])
    proc = cli("image", "--used-only", cut, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "lie past that end" in proc.stderr, proc.stderr


def _tree(root: Path) -> Path:
    """A small tree: files of sizes around the inline limits, a long and a short symlink, a small and
    a large directory, one file of several blocks."""
    rnd = random.Random(3)
    (root / "small_dir").mkdir(parents=True)
    (root / "big_dir").mkdir()
    for n in (0, 1, 59, 60, 61, 100, 150, 3000):
        (root / f"f{n}.bin").write_bytes(rnd.randbytes(n))
    (root / "long_link").symlink_to("x" * 100)
    (root / "short_link").symlink_to("short/target")
    (root / "small_dir" / "a").write_text("a\n")
    for i in range(200):
        (root / "big_dir" / f"e{i:03d}").write_text(str(i))
    (root / "big.bin").write_bytes(rnd.randbytes(300_000))
    return root


def _extracted(vol: Path, tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``extract /`` through the CLI: file hashes, and the targets of the symlinks it made."""
    dest = tmp / "dest"
    cli("extract", vol, "/", dest)
    return _expected(dest)


def _files(root: Path) -> dict[str, str]:
    """``{relpath: sha256}`` of the regular files under ``root`` (symlinks left out)."""
    return {p.relative_to(root).as_posix(): fsbuild.sha256_file(p) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and p.relative_to(root).parts[0] != "lost+found"}


def _expected(tree: Path) -> tuple[dict[str, str], dict[str, str]]:
    links = {p.relative_to(tree).as_posix(): os.readlink(p) for p in tree.rglob("*")
             if p.is_symlink() and p.relative_to(tree).parts[0] != "lost+found"}
    return _files(tree), links


@pytest.mark.parametrize(("name", "opts", "kind"), [
    ("rev0", ("-r", "0"), "ext2"),
    ("bigalloc", ("-O", "bigalloc", "-C", "16384"), "ext4"),
    ("inline_data", ("-O", "inline_data"), "ext4"),
])
def test_ext_variants_read_and_image_right(name: str, opts: tuple[str, ...], kind: str, tmp_path: Path) -> None:
    """Items 3-5: revision 0 (with s_inode_size zeroed as old tools left it), bigalloc and inline_data
    volumes: files and links extract identical, the map is what dumpe2fs counts, a used-only copy is
    clean."""
    need_tools(*fsbuild.TOOLS["ext"], "dumpe2fs")
    tree = _tree(tmp_path / "tree")
    vol = tmp_path / f"{name}.raw"
    fsbuild.random_image(vol, 16)
    run("mke2fs", "-q", "-F", "-t", kind, "-E", "nodiscard", *opts, "-d", tree, vol)
    if name == "rev0":
        with open(vol, "r+b") as f:
            f.seek(1024 + 88)
            assert f.read(2) == (128).to_bytes(2, "little")
            f.seek(1024 + 88)
            f.write(b"\0\0")  # undefined in revision 0: what early mke2fs left
    if name == "inline_data":
        assert "Size of inline data: 100" in run("debugfs", "-R", "stat /f100.bin", vol)
    assert _extracted(vol, tmp_path) == _expected(tree)
    listing = cli("ls", "-l", vol, "/").stdout
    assert f"long_link -> {'x' * 100}\n" in listing
    with FileSource(str(vol)) as src:
        info, amap = allocation_map(src)
    assert info.warnings == ()
    text = run("dumpe2fs", "-h", vol)
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
    used_blocks = int(fields["Block count"]) - int(fields["Free blocks"])
    ratio = int(fields.get("Cluster size", fields["Block size"])) // int(fields["Block size"])
    assert info.cluster_size == int(fields["Block size"]) * ratio
    assert amap.used_bytes == used_blocks * int(fields["Block size"])
    restored, warnings = image_and_restore(vol, tmp_path)
    assert warnings == []
    assert fsbuild.fsck(restored, "ext").returncode == 0
    # (debugfs rdump writes tiny inline files 60 bytes long; the original volume's files were proven above)
    (tmp_path / "dest").rename(tmp_path / "dest-original")
    assert _extracted(restored, tmp_path) == _expected(tree)


def test_ext2_revision_0_mounts_and_reads_alike(tmp_path: Path) -> None:
    """Item 3: the kernel mounts the revision 0 volume; what it reads is what extract writes."""
    need_tools("mke2fs")
    tree = _tree(tmp_path / "tree")
    vol = tmp_path / "rev0.raw"
    run("mke2fs", "-q", "-F", "-t", "ext2", "-r", "0", "-E", "nodiscard", "-d", tree, vol, "16M")
    with open(vol, "r+b") as f:
        f.seek(1024 + 88)
        f.write(b"\0\0")
    with kernel_mount(vol) as mnt:
        expected = _files(mnt), {p.relative_to(mnt).as_posix(): os.readlink(p) for p in mnt.rglob("*")
                                 if p.is_symlink()}
    assert _extracted(vol, tmp_path) == expected


@contextlib.contextmanager
def fusefat(path: Path, writable: bool = False) -> Iterator[Path]:
    """A FAT volume file mounted with fusefat (root): the one FAT writer here that decides FAT32 by
    BPB_FATSz16 (mtools decides by the cluster count and finds no root directory slots)."""
    need_root()
    need_tools("fusefat")
    mnt = Path(tempfile.mkdtemp(prefix="realvol-fat-"))
    run("fusefat", "-o", "rw+" if writable else "ro", path, mnt)
    try:
        yield mnt
    finally:
        run("umount", mnt)
        mnt.rmdir()


def test_fat32_with_few_clusters(tmp_path: Path) -> None:
    """Item 6: ``mkfs.fat -F 32 -s 8`` on 64 MiB: FAT32 (BPB_FATSz16 is 0) with 16,348 clusters, fewer
    than the 65,525 fatgen103 asks for; Linux and Windows read it as FAT32."""
    need_tools("mkfs.fat", "fsck.vfat")
    tree = _tree(tmp_path / "tree")
    for link in ("long_link", "short_link"):  # FAT has none
        (tree / link).unlink()
    vol = tmp_path / "fat32.raw"
    fsbuild.random_image(vol, 64)
    run("mkfs.fat", "-F", "32", "-s", "8", vol)
    with fusefat(vol, writable=True) as mnt:
        for item in sorted(tree.rglob("*")):  # plain copies: fusefat implements no chmod or utime
            target = mnt / item.relative_to(tree)
            if item.is_dir():
                target.mkdir()
            else:
                shutil.copyfile(item, target)
    check = fsbuild.fsck(vol, "fat")
    assert check.returncode == 0 and "FAT32 according to fat_length" in check.stdout + check.stderr
    with FileSource(str(vol)) as src:
        info = detect(src)
    assert info is not None and info.type == "fat32"
    expected = _files(tree)
    assert _extracted(vol, tmp_path)[0] == expected
    restored, warnings = image_and_restore(vol, tmp_path)
    assert warnings == []
    assert fsbuild.fsck(restored, "fat").returncode == 0
    with fusefat(restored) as mnt:
        assert _files(mnt) == expected


def test_ext_journal_replayed_in_memory(tmp_path: Path) -> None:
    """Item 7: three transactions written with debugfs: x.txt's block rewritten, y.txt's block
    rewritten then revoked.  ls/extract read what e2fsck's recovery leaves (x new, y old), say so in
    one line, and write nothing to the volume; used-only imaging still refuses (the bitmaps may be in
    the journal)."""
    need_tools(*fsbuild.TOOLS["ext"])
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "x.txt").write_text("x old content\n")
    (tree / "y.txt").write_text("y old content\n")
    vol = tmp_path / "ext4.raw"
    fsbuild.random_image(vol, 16)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-E", "nodiscard", "-d", tree, vol)
    bx, by = (run("debugfs", "-R", f"bmap /{n} 0", vol).strip() for n in ("x.txt", "y.txt"))
    for name, text in (("nx", "x NEW content\n"), ("ny", "y NEW content\n")):
        (tmp_path / name).write_bytes(text.encode().ljust(1024, b"\0"))
    run("debugfs", "-w", "-f", "-", vol, stdin=(f"jo\njw -b {bx} {tmp_path / 'nx'}\njw -b {by} {tmp_path / 'ny'}\n"
                                                f"jw -r {by}\njc\n").encode())
    assert "needs_recovery" in run("dumpe2fs", "-h", vol)
    before = fsbuild.sha256_file(vol)
    proc = cli("ls", vol, "/")
    assert warnings_of(proc.stderr) == [
        "warning: ext4: the journal needs recovery (mounted, or not cleanly unmounted): 1 block of 3 transactions "
        "replayed in memory; nothing is written to the image"]
    dest = tmp_path / "dest"
    proc = cli("extract", vol, "/", dest)
    assert len(warnings_of(proc.stderr)) == 1
    assert (dest / "x.txt").read_text() == "x NEW content\n" and (dest / "y.txt").read_text() == "y old content\n"
    assert fsbuild.sha256_file(vol) == before
    copy = tmp_path / "fsck.raw"
    shutil.copyfile(vol, copy)
    subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True)  # the reference recovery
    with tempfile.TemporaryDirectory() as out:
        run("debugfs", "-R", f"rdump / {out}", copy)
        assert _files(Path(out)) == _files(dest)
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "journal needs recovery" in proc.stderr


def test_ext_journal_of_a_crashed_mount(tmp_path: Path) -> None:
    """Item 7 with the kernel's own journal (checksum v3 tags on a metadata_csum volume): a copy taken
    while mounted, after sync, reads as the kernel's recovery leaves it."""
    need_tools("mkfs.ext4", "e2fsck", "debugfs")
    vol = tmp_path / "ext4.raw"
    fsbuild.random_image(vol, 32)
    run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", vol)
    crash = tmp_path / "crash.raw"
    rnd = random.Random(5)
    with kernel_mount(vol, read_only=False) as mnt:
        for i in range(40):
            (mnt / f"f{i:02d}.bin").write_bytes(rnd.randbytes(rnd.randrange(1, 200_000)))
        (mnt / "sub").mkdir()
        (mnt / "sub" / "late.txt").write_text("written last\n")
        os.sync()
        shutil.copyfile(vol, crash)  # what a power cut would leave
    assert "needs_recovery" in run("dumpe2fs", "-h", crash)
    dest = tmp_path / "dest"
    proc = cli("extract", crash, "/", dest)
    assert len(warnings_of(proc.stderr)) == 1 and "replayed in memory" in proc.stderr, proc.stderr
    subprocess.run(["e2fsck", "-fy", str(crash)], capture_output=True)
    with tempfile.TemporaryDirectory() as out:
        run("debugfs", "-R", f"rdump / {out}", crash)
        assert _files(Path(out)) == _files(dest) and len(_files(dest)) == 41


@pytest.mark.parametrize("damage", ["empty log", "journal superblock zeroed"])
def test_ext_journal_that_cannot_be_replayed_is_said(damage: str, tmp_path: Path) -> None:
    """Item 7: the flag set over an empty log (nothing to replay), or a journal whose superblock is gone
    (not replayed: the files as last written in place); either way one line, and the files extract."""
    need_tools(*fsbuild.TOOLS["ext"])
    vol = tmp_path / "ext4.raw"
    expected = fsbuild.make_ext(vol, 16, None)
    run("debugfs", "-w", "-R", "feature needs_recovery", vol)
    lead = "warning: ext4: the journal needs recovery (mounted, or not cleanly unmounted)"
    if damage == "empty log":
        want = f"{lead}, but its log is empty: nothing to replay"
    else:
        first = int(run("debugfs", "-R", "bmap <8> 0", vol).strip())
        with open(vol, "r+b") as f:
            f.seek(first * 1024)
            f.write(bytes(1024))
        want = (f"{lead} and the journal's superblock is damaged: its files are shown as last written in place, "
                "without the journal's changes")
    proc = cli("ls", vol, "/")
    assert warnings_of(proc.stderr) == [want]
    proc = cli("extract", vol, "/", tmp_path / "dest")
    assert warnings_of(proc.stderr) == [want]
    assert fsbuild.hash_dir(tmp_path / "dest") == expected
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "journal needs recovery" in proc.stderr
