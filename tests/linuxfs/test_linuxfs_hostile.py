"""Damaged and hostile XFS, Btrfs and LVM2 volumes: one clear line and exit 4, never a hang or a traceback.

Each case damages a copy of a real volume in one precise way (checksums fixed up where the point
is a structure that checks out but lies), then asks for its allocation map.  ``--used-only=auto``
then images it in full.
"""

# ruff: noqa: F811  (pytest fixtures are imported from lfscases and requested by name)
from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import lfsbuild
import pytest
from lfscases import Volume, lvm_volume, require, tree_dir, volume  # noqa: F401

from conftest import cli
from imaging_utility.crc32c import crc32c
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import UnsupportedError
from imaging_utility.filesystems import allocation_map, btrfs
from imaging_utility.filesystems.c_lvm import calc_crc


def refused(path: Path) -> str:
    """The one-line reason ``allocation_map`` refuses ``path``."""
    with FileSource(str(path)) as src, pytest.raises(UnsupportedError) as err:
        allocation_map(src)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def copy_of(vol: Path, tmp: Path) -> Path:
    dst = tmp / vol.name
    shutil.copyfile(vol, dst)
    return dst


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def xfs_fix_crc(path: Path, offset: int, size: int, crc_at: int) -> None:
    block = bytearray(read(path, offset, size))
    block[crc_at : crc_at + 4] = b"\0\0\0\0"
    patch(path, offset + crc_at, crc32c(block).to_bytes(4, "little"))


def xfs_db(path: Path, *cmds: str) -> dict[str, int]:
    args = [a for c in cmds for a in ("-c", c)]
    text = subprocess.run(["xfs_db", "-r", *args, str(path)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+) = (\d+)$", text, re.M)}


# --- XFS ------------------------------------------------------------------------------------------
def test_xfs_superblock_checksum(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-v5").path, tmp_path)
    patch(img, 108, b"X")  # sb_fname
    assert "XFS superblock at offset 0 is damaged: superblock CRC mismatch" in refused(img)


def test_xfs_superblock_geometry_that_checks_out(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-v5").path, tmp_path)
    patch(img, 88, struct.pack(">I", 1000))  # sb_agcount, CRC fixed: a consistent lie
    xfs_fix_crc(img, 0, 512, 224)
    assert "does not fit 1000 AGs" in refused(img)


def test_xfs_directory_block_size_beyond_the_limit(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """sb_dirblklog 40 (CRC fixed) claimed directory blocks of 4 PiB: reading a directory was a MemoryError
    (fuzz input kept in fuzz/crashes/linuxfs); now one line and exit 8 for the file tree."""
    img = copy_of(volume("xfs-v5").path, tmp_path)
    patch(img, 192, bytes([40]))  # sb_dirblklog
    xfs_fix_crc(img, 0, 512, 224)
    proc = cli("ls", "-R", img, "/", check=8)
    assert proc.stderr.count("\n") == 1 and "directory blocks of 2**40" in proc.stderr, proc.stderr


def _bnobt_root(img: Path) -> tuple[int, int, int]:
    """(byte offset, block size, level) of the deepest bnobt root."""
    sb = xfs_db(img, "sb 0", "p blocksize agblocks agcount")
    bs = sb["blocksize"]
    agfs = [(xfs_db(img, f"agf {a}", "p bnoroot bnolevel"), a) for a in range(sb["agcount"])]
    agf, agno = max(agfs, key=lambda t: t[0]["bnolevel"])
    return (agno * sb["agblocks"] + agf["bnoroot"]) * bs, bs, agf["bnolevel"]


def test_xfs_bnobt_loop(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-1k-2ag-deep").path, tmp_path)
    off, bs, level = _bnobt_root(img)
    assert level >= 2
    maxrecs = (bs - 56) // 12
    ptrs = 56 + maxrecs * 8
    first = read(img, off + ptrs, 4)
    patch(img, off + ptrs + 4, first)  # the second child is the first one again
    xfs_fix_crc(img, off, bs, 52)
    assert "loops" in refused(img)


def test_xfs_bnobt_block_checksum(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-v5").path, tmp_path)
    off, bs, _ = _bnobt_root(img)
    patch(img, off + bs - 1, bytes([read(img, off + bs - 1, 1)[0] ^ 0xFF]))
    assert "bnobt block" in refused(img) and "CRC mismatch" in refused(img)


def test_xfs_dirty_log(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-v5").path, tmp_path)
    with lfsbuild.mounted(img) as mnt:
        (mnt / "new.bin").write_bytes(random.Random(1).randbytes(300_000))
        subprocess.run(["sync"], check=True)
        (mnt / "newer.bin").write_bytes(b"x" * 5000)
        lfsbuild.run("xfs_io", "-x", "-c", "shutdown", mnt)  # down without flushing the log
    assert "log is not clean" in refused(img)


# --- Btrfs ----------------------------------------------------------------------------------------
def test_btrfs_superblock_checksum(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("btrfs-default").path, tmp_path)
    patch(img, 65536 + 299, b"X")  # label
    assert "Btrfs superblock at offset 0x10000 is damaged: checksum mismatch" in refused(img)


def _extent_root(img: Path, tree: str = "extent") -> tuple[int, int, int]:
    """(logical address, level, 0) of the root of the extent tree (or of ``tree``), from btrfs-progs."""
    text = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", tree, str(img)],
                          capture_output=True, text=True, check=True).stdout
    m = re.search(r"^(?:node|leaf) (\d+) (?:level (\d+) )?items", text, re.M)
    assert m
    return int(m[1]), int(m[2] or 0), 0


def _physical(img: Path, logical: int) -> list[int]:
    with FileSource(str(img)) as src:
        sb = btrfs.probe(src)
        assert sb is not None
        chunk = btrfs.read_chunks(src, sb).find(logical, 4096)
        return [s + logical - chunk.logical for s in chunk.stripes]


def _fix_csum(img: Path, off: int, size: int) -> None:
    patch(img, off, crc32c(read(img, off + 32, size - 32)).to_bytes(4, "little"))


def test_btrfs_tree_block_checksum_uses_the_dup_copy(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    vol = volume("btrfs-default")
    img = copy_of(vol.path, tmp_path)
    logical, _, _ = _extent_root(img)
    copies = _physical(img, logical)
    assert len(copies) == 2  # DUP metadata
    with FileSource(str(vol.path)) as src:
        _, good = allocation_map(src)
    patch(img, copies[0] + 200, b"\xde\xad")
    with FileSource(str(img)) as src:
        assert allocation_map(src)[1] == good  # read from the second copy
    patch(img, copies[1] + 200, b"\xde\xad")
    assert "checksum mismatch" in refused(img)


def test_btrfs_tree_loop(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("btrfs-4k-nodes-deep").path, tmp_path)
    logical, level, _ = _extent_root(img)
    assert level >= 1
    (off,) = _physical(img, logical)
    first = read(img, off + 101 + 17, 16)  # blockptr and generation of the first key pointer
    patch(img, off + 101 + 33 + 17, first)
    _fix_csum(img, off, 4096)
    assert "loops" in refused(img)


def _lowest_node(img: Path, tree: str) -> tuple[int, list[tuple[int, int, int, int, int]]]:
    """(device offset, key pointers) of the leftmost node just above the leaves of ``tree``."""
    logical, level, _ = _extent_root(img, tree)
    assert level >= 1
    while True:
        (off,) = _physical(img, logical)
        node = read(img, off, 4096)
        count = struct.unpack_from("<I", node, 96)[0]
        ptrs = [struct.unpack_from("<QBQQQ", node, 101 + 33 * i) for i in range(count)]
        if level == 1:
            return off, ptrs
        logical, level = ptrs[0][3], level - 1


def test_btrfs_file_extents_in_a_damaged_leaf(tmp_path: Path) -> None:
    """A file whose extent items run on into a leaf that fails its checksum: the file is an error, not its
    first extents followed by zeros (dissect's cursor took the error for the end of the items)."""
    img = tmp_path / "frag.img"
    img.write_bytes(bytes(128 << 20))
    lfsbuild.run("mkfs.btrfs", "-q", "-f", "-n", "4096", "-m", "single", img)
    with lfsbuild.mounted(img) as mnt:
        with open(mnt / "frag", "wb") as f, open(mnt / "other", "wb") as g:
            for i in range(300):  # one extent item per piece: ~6 leaves of 4 KiB
                for out, data in ((f, bytes([i % 251 + 1]) * 4096), (g, b"o" * 4096)):
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
        ino = os.stat(mnt / "frag").st_ino
    _, ptrs = _lowest_node(img, "fs")
    i = next(i for i in range(1, len(ptrs)) if ptrs[i][:2] == (ino, 108) and ptrs[i - 1][0] == ino)
    (leaf,) = _physical(img, ptrs[i][3])
    patch(img, leaf + 2000, bytes([read(img, leaf + 2000, 1)[0] ^ 0xFF]))
    proc = cli("extract", img, "/", tmp_path / "out", check=3)
    assert "/frag:" in proc.stderr and "checksum mismatch" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "other").read_bytes() == b"o" * 4096 * 300


def test_btrfs_files_of_a_tree_with_a_shared_block(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """A node points twice at one leaf: listing the directory whose entries run on into the repeated leaf
    stops at the first key that goes back (a chain of such blocks would repeat the listing without end;
    before, dissect's cursor took the error for the end of the items, and the first copy of this test
    showed every entry twice).  One line for that directory, the others listed, exit 3."""
    img = copy_of(volume("btrfs-4k-nodes-deep").path, tmp_path)
    off, ptrs = _lowest_node(img, "fs")
    # A leaf whose first key is a directory entry of the same directory as its left sibling's: that
    # directory's entries cross between them, so its listing walks on into the repeated leaf.
    i = next(i for i in range(1, len(ptrs)) if ptrs[i][:2] == ptrs[i - 1][:2] and ptrs[i][1] == 96)
    patch(img, off + 101 + 33 * i + 17, read(img, off + 101 + 33 * (i - 1) + 17, 16))
    _fix_csum(img, off, 4096)
    proc = cli("ls", "-R", img, "/", check=3)
    bad = [line for line in proc.stderr.splitlines() if "a shared or looping tree block" in line]
    assert len(bad) == 1 and "directory /" in bad[0] and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == len(set(proc.stdout.splitlines()))



def test_btrfs_empty_leaf_below_a_node(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """A leaf below a node that claims no items (checksum fixed; the kernel refuses it): dissect's binary
    search never ended on it, so extracting the files whose items it held hung (a fuzz find).  Now it is
    damage, said for the entries it held, and the rest is extracted."""
    img = copy_of(volume("btrfs-4k-nodes-deep").path, tmp_path)
    _, ptrs = _lowest_node(img, "fs")
    i = next(i for i in range(1, len(ptrs)) if ptrs[i][0] >= 257 and ptrs[i][1] <= 24)  # an inode's items
    (leaf,) = _physical(img, ptrs[i][3])
    patch(img, leaf + 96, bytes(4))  # nritems
    _fix_csum(img, leaf, 4096)
    proc = cli("extract", img, "/", tmp_path / "out", check=None, timeout=120)
    assert proc.returncode in (3, 8), proc.stderr
    assert "claims 0 items" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# --- LVM2 -----------------------------------------------------------------------------------------
def rewrite_metadata(img: Path, edit: Callable[[str], str]) -> None:
    """Edit the metadata text of the PV's first metadata area, with every checksum fixed."""
    hdr = bytearray(read(img, 4096, 512))
    start = struct.unpack_from("<Q", hdr, 24)[0]
    rel, size, _, flags = struct.unpack_from("<QQII", hdr, 40)
    text = read(img, start + rel, size).rstrip(b"\0").decode()
    new = edit(text).encode() + b"\0"
    assert new != text.encode() + b"\0"
    patch(img, start + rel, new)
    struct.pack_into("<QQII", hdr, 40, rel, len(new), calc_crc(new), flags)
    struct.pack_into("<I", hdr, 0, calc_crc(bytes(hdr[4:])))
    patch(img, 4096, bytes(hdr))


def test_lvm_segment_beyond_the_pv(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    img = copy_of(lvm_volume.path, tmp_path)
    rewrite_metadata(img, lambda t: re.sub(r"pe_count = (\d+)", "pe_count = 10", t, count=1))
    assert "lies beyond its PV" in refused(img)


def test_lvm_overlapping_volumes(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    img = copy_of(lvm_volume.path, tmp_path)
    # The raw LV's stripe moved onto the data LV's first extent.
    rewrite_metadata(img, lambda t: re.sub(r'(raw \{.*?stripes = \[\s*"pv0", )\d+', r"\g<1>0", t, flags=re.S))
    assert "both claim extent 0" in refused(img)


def test_lvm_metadata_checksum(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    img = copy_of(lvm_volume.path, tmp_path)
    hdr = read(img, 4096, 512)
    rel = struct.unpack_from("<Q", hdr, 40)[0]
    patch(img, 4096 + rel + 10, b"#")
    assert "fails its checksum" in refused(img)


def test_lvm_metadata_syntax(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    img = copy_of(lvm_volume.path, tmp_path)
    rewrite_metadata(img, lambda t: t.replace("logical_volumes {", "logical_volumes { {", 1))
    assert "malformed" in refused(img)


def test_lvm_label_checksum(lvm_volume: lfsbuild.LvmVolume, tmp_path: Path) -> None:
    img = copy_of(lvm_volume.path, tmp_path)
    patch(img, 512 + 40, b"Z")  # inside the PV UUID
    assert "LVM2 label in sector 1 is damaged: checksum mismatch" in refused(img)


# --- through the CLI ------------------------------------------------------------------------------
def test_cli_refuses_in_one_line_and_auto_images_in_full(volume: Callable[[str], Volume], tmp_path: Path) -> None:
    img = copy_of(volume("xfs-v5").path, tmp_path)
    patch(img, 108, b"X")
    proc = cli("image", "--used-only", img, tmp_path / "a.zst", check=4)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "superblock CRC mismatch" in proc.stderr
    proc = cli("image", "--used-only=auto", "--json", img, tmp_path / "b.zst")
    assert json.loads(proc.stdout)["used_bytes"] is None
    assert "imaging in full" in proc.stderr


@pytest.mark.parametrize("case_id", ["xfs-v5", "btrfs-default"])
def test_random_damage_never_crashes(case_id: str, volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """Bytes flipped in the metadata: a map or ``UnsupportedError``, nothing else, and quickly."""
    img = copy_of(volume(case_id).path, tmp_path)
    with FileSource(str(img)) as src:
        _, amap = allocation_map(src)
    meta = [e for e in amap if e.offset < 8 << 20]
    rnd = random.Random(case_id)
    original = img.read_bytes()
    for _ in range(25):
        ext = rnd.choice(meta)
        spots = [(ext.offset + rnd.randrange(min(ext.length, 64 << 10)), rnd.randrange(256)) for _ in range(4)]
        for off, val in spots:
            patch(img, off, bytes([val]))
        with FileSource(str(img)) as src:
            try:
                allocation_map(src)
            except UnsupportedError as e:
                assert "\n" not in str(e)
        for off, _ in spots:
            patch(img, off, original[off : off + 1])


@pytest.mark.parametrize("case_id", ["xfs-v5", "btrfs-default"])
def test_files_of_a_cut_short_volume(case_id: str, volume: Callable[[str], Volume], tmp_path: Path) -> None:
    """A volume cut short after its superblock, so that its root directory lies past the end: ``ls`` says
    so in one line, exit 8 (found by fuzz_linuxfs: XFS's root inode was read outside every guard)."""
    img = copy_of(volume(case_id).path, tmp_path)
    with open(img, "r+b") as f:
        f.truncate(8192 if case_id.startswith("xfs") else 1 << 20)
    proc = cli("ls", img, check=8)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "root" in proc.stderr


def test_btrfs_of_two_devices_is_unsupported_not_damaged(tmp_path: Path) -> None:
    """One device of a two-device RAID1: used-only refused in one line (auto images it in full), ls/extract
    say it is not supported (exit 4), not that it is damaged."""
    require("btrfs")
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for path in (a, b):
        with open(path, "wb") as f:
            f.truncate(300 << 20)
    with lfsbuild.loop(a) as dev_a, lfsbuild.loop(b) as dev_b:
        lfsbuild.run("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", dev_a, dev_b)
    for args in (("image", "--used-only", a, tmp_path / "o.img"), ("ls", a, "/"),
                 ("extract", a, "/", tmp_path / "out")):
        proc = cli(*args, check=4)
        assert "spans 2 devices" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    cli("image", "--used-only=auto", a, tmp_path / "o.img")


def test_xfs_with_a_dirty_log_is_read_with_one_line_saying_so(tmp_path: Path) -> None:
    """A filesystem shut down with changes in its log (xfs_io shutdown, as a crash leaves it): ls/extract
    read the files in place and say in one line that the log was not replayed; a clean one says nothing."""
    require("xfs")
    path = tmp_path / "xfs.img"
    with open(path, "wb") as f:
        f.truncate(320 << 20)
    lfsbuild.run("mkfs.xfs", "-q", "-f", path)
    with lfsbuild.mounted(path) as mnt:
        (mnt / "synced").write_bytes(random.Random(3).randbytes(200_000))
    assert "warning" not in cli("ls", path, "/").stderr
    with lfsbuild.mounted(path) as mnt:
        (mnt / "late").write_bytes(b"x" * 5000)
        os.sync()  # in the log; written in place later, by the log's own writeback
        (mnt / "later").write_bytes(b"y" * 5000)
        lfsbuild.run("xfs_io", "-x", "-c", "shutdown", mnt)
    proc = cli("extract", path, "/", tmp_path / "out")
    assert proc.stderr.count("warning: xfs: its log is not clean") == 1, proc.stderr
    assert "a kernel mount of a copy replays the log" in proc.stderr
    assert (tmp_path / "out" / "synced").read_bytes() == random.Random(3).randbytes(200_000)


def test_btrfs_with_a_log_tree_is_read_as_of_its_last_commit(tmp_path: Path) -> None:
    """A file fsynced after the last commit lives in the log tree until a mount replays it: the copy taken
    then lists the committed files, with one line saying what is not replayed; the kernel's replay adds it."""
    require("btrfs")
    path = tmp_path / "btrfs.img"
    with open(path, "wb") as f:
        f.truncate(256 << 20)
    lfsbuild.run("mkfs.btrfs", "-q", "-f", path)
    crash = tmp_path / "crash.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with lfsbuild.loop(path) as dev:
        lfsbuild.run("mount", "-o", "commit=300", dev, mnt)
        try:
            (mnt / "committed").write_bytes(b"c" * 10_000)
            os.sync()
            with open(mnt / "fsynced", "wb") as f:
                f.write(b"f" * 10_000)
                f.flush()
                os.fsync(f.fileno())
            shutil.copyfile(path, crash)  # what a power cut leaves
        finally:
            lfsbuild.run("umount", mnt)
    assert btrfs.probe(FileSource(str(crash))).log_root  # type: ignore[union-attr]
    proc = cli("ls", crash, "/")
    assert proc.stdout.split() == ["committed"], proc.stdout
    assert proc.stderr.count("warning: btrfs: it holds a log tree") == 1, proc.stderr
    with lfsbuild.mounted(crash) as replayed:
        assert sorted(p.name for p in replayed.iterdir()) == ["committed", "fsynced"]
