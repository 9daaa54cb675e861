"""Windows dynamic disks (LDM) read through their database: the volumes ``ldmtool`` (libldm) finds, used-only
imaging of every volume readable from this disk alone (simple, spanned, one plex of a mirror) with the
rest kept whole, files from a volume with ``--partition N --lv NAME``, and damaged databases kept whole
in one line.  The disks are written by ``ldmbuild.py``; the volumes' NTFS by mkntfs and ntfs-3g."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ldmbuild as L
import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imagetools import damage_chunk, used_only_round_trip
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree
from imaging_utility.partitions import read_partitions
from imaging_utility.partitions.ldm import read_ldm
from imaging_utility.partitions.ldm_source import find_volume

MiB = 1 << 20
SIZE = 256 * MiB
GROUP = L.GROUP_GUID
LAYOUT = L.Layout([
    L.Volume("Volume1", [L.Component([L.Piece(2048, 65536)])]),
    # two pieces, the second before the first on the disk; its record spans two VBLKs (the drive letter)
    L.Volume("Volume2", [L.Component([L.Piece(200000, 20000), L.Piece(100000, 20000)])], hint="E:\\Shares\\Projects"),
    L.Volume("Volume3", [L.Component([L.Piece(300000, 8192), L.Piece(0, 8192, "Disk2")], kind=1)]),
    L.Volume("Volume4", [L.Component([L.Piece(320000, 16384)]), L.Component([L.Piece(9000, 16384, "Disk2")])]),
    L.Volume("Volume5", [L.Component([L.Piece(340000, 4096), L.Piece(4096, 4096, "Disk2")])]),
], other_disks=["Disk2"])
NTFS = {"Volume1": [(2048, 65536)], "Volume2": [(200000, 20000), (100000, 20000)], "Volume4": [(320000, 16384)]}
KEPT = {"Volume3": (300000, 8192), "Volume5": (340000, 4096)}  # striped; spanned onto Disk2
FREE = (150000, 40000)  # sectors of the data area no volume holds


def _ldmtool(disk: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(["ldmtool", "-d", str(disk), "show", *args], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _build(tmp: Path, scheme: str) -> tuple[Path, int, dict[str, Path]]:
    """The disk (random bytes everywhere, so a dropped byte shows), its data area's start, and each NTFS
    volume as its own file (with its files)."""
    need_tools("mkntfs", "ntfs-3g", "sfdisk", "sgdisk")
    need_root()
    disk = tmp / f"{scheme}.raw"
    fsbuild.random_image(disk, SIZE // MiB, seed=5)
    start = L.write_disk(disk, SIZE, LAYOUT, scheme)
    volumes: dict[str, Path] = {}
    with open(disk, "r+b") as f:
        for n, (name, pieces) in enumerate(NTFS.items()):
            vol = tmp / f"{name}.raw"
            fsbuild.random_image(vol, 1, seed=n)
            with open(vol, "r+b") as v:
                v.truncate(sum(s for _, s in pieces) * L.SECTOR)
            fsbuild._run("mkntfs", "-F", "-Q", "-q", "-L", name, vol)
            with fsbuild.mounted(vol, "ntfs") as mnt:
                fsbuild.make_tree(mnt, seed=n, large_mib=1)
            data = vol.read_bytes()
            at = 0
            for first, sectors in pieces:
                f.seek(start + first * L.SECTOR)
                f.write(data[at : at + sectors * L.SECTOR])
                at += sectors * L.SECTOR
            volumes[name] = vol
    return disk, start, volumes


def _reassemble(disk: Path, start: int, pieces: list[tuple[int, int]], out: Path) -> Path:
    with open(disk, "rb") as f, open(out, "wb") as o:
        for first, sectors in pieces:
            f.seek(start + first * L.SECTOR)
            o.write(f.read(sectors * L.SECTOR))
    return out


@contextlib.contextmanager
def _partitioned(disk: Path, count: int) -> Iterator[str]:
    """``disk`` on a read-only loop device with its ``count`` partition nodes (``partx``: this kernel
    parses no tables itself); detached afterwards."""
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(disk)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
        deadline = time.monotonic() + 5
        while not all(os.path.exists(f"{dev}p{i}") for i in range(1, count + 1)):
            assert time.monotonic() < deadline, f"the partitions of {dev} did not appear"
            time.sleep(0.05)
        yield dev
    finally:
        subprocess.run(["partx", "-d", dev], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_database_reads_as_ldmtool_reads_it(scheme: str, tmp_path: Path) -> None:
    need_tools("ldmtool", "sfdisk", "sgdisk")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"")
    start = L.write_disk(disk, SIZE, LAYOUT, scheme)
    with FileSource(str(disk)) as src:
        db = read_ldm(src, read_partitions(src))
    assert db is not None
    group = _ldmtool(disk, "diskgroup", GROUP)
    assert group["name"] == db.group == "WIN-SRV-Dg0"
    assert group["volumes"] == [v.name for v in db.volumes]
    me = _ldmtool(disk, "disk", GROUP, "Disk1")
    assert me["data-start"] == db.data_start // 512 == start // 512 and me["data-size"] == db.data_size // 512
    for vol in db.volumes:
        theirs = _ldmtool(disk, "volume", GROUP, vol.name)
        assert (theirs["type"], theirs["size"]) == (vol.kind, vol.size // 512), vol
        names = theirs["partitions"]
        assert isinstance(names, list)
        ours = [p for c in vol.components for p in c.parts]
        assert [p.name for p in ours] == names
        for p in ours:
            part = _ldmtool(disk, "partition", GROUP, p.name)
            assert (part["start"], part["size"], part["disk"]) == (p.start // 512, p.length // 512,
                                                                    p.name.split("-")[0])
    kinds = {v.name: (v.kind, v.why_not is None) for v in db.volumes}
    assert kinds == {"Volume1": ("simple", True), "Volume2": ("spanned", True), "Volume3": ("striped", False),
                     "Volume4": ("mirrored", True), "Volume5": ("spanned", False)}


@pytest.mark.parametrize("scheme", ["mbr", "gpt"])
def test_volumes_imaged_used_only_and_read(scheme: str, tmp_path: Path) -> None:
    disk, start, volumes = _build(tmp_path, scheme)
    part = "1" if scheme == "mbr" else "2"
    shown = cli("info", disk).stdout
    assert "Windows dynamic disk (LDM) data" in shown, shown
    assert "WIN-SRV-Dg0/Volume2: ntfs" in shown and "WIN-SRV-Dg0/Volume4: ntfs" in shown, shown
    assert "Volume3: no known filesystem" in shown and "a striped volume" in shown, shown
    assert "pieces on other disks (Disk2)" in shown, shown
    used, original, restored = used_only_round_trip(disk, tmp_path)
    assert used < 40 * MiB  # of 256 MiB, all random
    image, back = tmp_path / f"{disk.stem}.img.zst", tmp_path / f"{disk.stem}.back"
    for first, sectors in KEPT.values():  # kept whole, byte for byte
        at = start + first * L.SECTOR
        assert restored[at : at + sectors * L.SECTOR] == original[at : at + sectors * L.SECTOR]
    at = start + FREE[0] * L.SECTOR
    assert restored[at : at + FREE[1] * L.SECTOR] == bytes(FREE[1] * L.SECTOR)  # no volume there: dropped
    assert restored[:start] == original[:start]  # the table, the PRIVHEAD (GPT: and the database)
    tail = MiB if scheme == "mbr" else 33 * L.SECTOR  # the database at the disk's end (GPT: the backup table)
    assert restored[-tail:] == original[-tail:]
    for name, pieces in NTFS.items():
        expected = fsbuild.read_files(volumes[name], "ntfs")
        assert fsbuild.read_files(_reassemble(back, start, pieces, tmp_path / f"{name}-back.raw"), "ntfs") == expected
        out = tmp_path / f"x-{name}"
        cli("extract", "--partition", part, "--lv", name, image, "/", out)
        assert fsbuild.hash_dir(out) == expected
    _damage_named(disk, start, part, tmp_path)
    listed = cli("ls", "--partition", part, image, "/", check=2)
    assert "choose a volume with --lv NAME" in listed.stderr and "WIN-SRV-Dg0/Volume2 (spanned)" in listed.stderr
    refused = cli("ls", "--partition", part, "--lv", "Volume3", image, "/", check=4)
    assert refused.stderr.count("\n") == 1 and "striped volume" in refused.stderr


def _damage_named(disk: Path, start: int, part: str, tmp: Path) -> None:
    """``ls --damaged --lv``: a corrupt chunk under a file of the spanned volume is traced through its
    pieces to that file (it was read as if the volume began at the image's byte 0)."""
    chunk = 64 * 1024
    with FileSource(str(disk)) as src:
        tree = open_tree(find_volume(src, read_partitions(src), "Volume2"))
        runs = [(e.path, r) for e in tree.walk("/") if e.type == "file" for r in tree.data_runs(e.path)]

    def to_disk(v_off: int, n: int) -> int | None:
        at = 0
        for first, sectors in NTFS["Volume2"]:
            if at <= v_off and v_off + n <= at + sectors * L.SECTOR:
                return start + first * L.SECTOR + v_off - at
            at += sectors * L.SECTOR
        return None

    def chunk_in(run: tuple[int, int, int]) -> int | None:
        at = to_disk(run[1], run[2])
        first = None if at is None else -(-at // chunk) * chunk
        return first if at is not None and first is not None and first + chunk <= at + run[2] else None

    path, run = max(((p, r) for p, r in runs if chunk_in(r) is not None), key=lambda pr: pr[1][1])
    at, first = to_disk(run[1], run[2]), chunk_in(run)
    assert at is not None and first is not None
    img = tmp / "disk64.img.zst"
    cli("image", "--used-only", "--chunk-size", "64K", disk, img)
    damage_chunk(img, first // chunk)
    found = json.loads(cli("ls", "--damaged", "--json", "--partition", part, "--lv", "Volume2", img).stdout)
    assert found == [{"path": path, "cause": "corrupt", "lost": [{"offset": run[0] + first - at, "length": chunk}],
                      "lost_bytes": chunk}], found


def _damage(raw: bytearray, db: int, how: str) -> None:
    vmdb = db + 17 * 512
    entries = vmdb + 512
    if how == "counts":
        struct.pack_into(">I", raw, vmdb + 133, 9)  # nine volumes committed
    elif how == "missing-entry":  # the second VBLK of the two-VBLK volume record
        for at in range(entries, entries + 128 * 40, 128):
            if raw[at : at + 4] == b"VBLK" and struct.unpack_from(">HH", raw, at + 12) == (1, 2):
                raw[at : at + 4] = b"\0\0\0\0"
                break
    elif how == "past-data-area":  # Volume1's piece moved past the data area's end
        for at in range(entries, entries + 128 * 40, 128):
            if b"Disk1-01" in raw[at : at + 128]:
                name = raw.index(b"Disk1-01", at) + 8
                struct.pack_into(">Q", raw, name + 12, 600_000)
                break
    elif how == "overlap":  # Volume4's piece moved onto Volume1's
        for at in range(entries, entries + 128 * 40, 128):
            if b"Disk1-" in raw[at : at + 128] and raw[at + 16 + 3] == 0x33:
                name = raw.index(b"Disk1-", at) + 8
                if struct.unpack_from(">Q", raw, name + 12)[0] == 40000:
                    struct.pack_into(">Q", raw, name + 12, 3000)
                    break
    elif how == "long-number":  # a 9-byte number
        raw[entries + 16 + 8] = 9
    elif how == "database-past-end":
        struct.pack_into(">Q", raw, 6 * 512 + 299, (SIZE // 512) + 10)
    elif how == "no-tocblock":
        raw[db + 1024 : db + 1032] = b"\0" * 8


@pytest.mark.parametrize("how", ["counts", "missing-entry", "past-data-area", "overlap", "long-number",
                                 "database-past-end", "no-tocblock"])
def test_damaged_database_keeps_the_partition_whole(how: str, tmp_path: Path) -> None:
    need_tools("sfdisk")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(random.Random(6).randbytes(64 * MiB))
    small = L.Layout([L.Volume("Volume1", [L.Component([L.Piece(2048, 8192)])], hint="D:\\Shares\\Archive"),
                      L.Volume("Volume4", [L.Component([L.Piece(40000, 4096)])])])
    L.write_disk(disk, 64 * MiB, small)
    original = disk.read_bytes()
    raw = bytearray(original)
    _damage(raw, 64 * MiB - L.DB_SECTORS * 512, how)
    assert raw != original
    disk.write_bytes(bytes(raw))
    shown = cli("info", disk)
    assert "ldm (not mapped)" in shown.stdout, shown.stdout
    lines = [ln for ln in shown.stderr.splitlines() if ln]
    assert len(lines) == 1 and "Windows dynamic disk (LDM) partition" in lines[0], shown.stderr
    assert "Traceback" not in shown.stderr
    image = tmp_path / "disk.img.zst"
    cli("image", "--used-only", disk, image)
    back = tmp_path / "back.raw"
    cli("restore", image, back)
    assert back.read_bytes() == disk.read_bytes()  # kept whole
    cli("ls", "--partition", "1", "--lv", "Volume1", image, "/", check=4)


def test_without_a_database_the_partition_is_named(tmp_path: Path) -> None:
    need_tools("sfdisk")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, type=42\n", check=True)
    shown = cli("info", disk)
    assert "no PRIVHEAD" in shown.stderr and shown.stderr.count("\n") == 1, shown.stderr


def test_partition_device_alone_is_mapped_through_its_disk(tmp_path: Path) -> None:
    """``image --used-only /dev/sdX1`` of a dynamic partition: the database is outside the partition, on the
    disk; the NTFS at the partition's start is a spanned volume's first piece, whose map would drop the
    second piece's data if it were taken as the partition's."""
    need_root()
    need_tools("losetup", "partx", "mkntfs", "ntfs-3g", "sfdisk")
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 64, seed=8)
    pieces = [(0, 16384), (40000, 16384)]
    start = L.write_disk(disk, 64 * MiB, L.Layout([L.Volume("Volume1", [L.Component([L.Piece(*p) for p in pieces])])]))
    vol = tmp_path / "vol.raw"
    fsbuild.random_image(vol, 16, seed=9)
    fsbuild._run("mkntfs", "-F", "-Q", "-q", vol)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        fsbuild.make_tree(mnt, seed=4, large_mib=4)
    data = vol.read_bytes()
    with open(disk, "r+b") as f:
        for (first, sectors), at in zip(pieces, (0, 8 * MiB), strict=True):
            f.seek(start + first * L.SECTOR)
            f.write(data[at : at + sectors * L.SECTOR])
    image = tmp_path / "p1.img.zst"
    with _partitioned(disk, 1) as dev:
        run = cli("image", "--used-only", "--json", f"{dev}p1", image)
    assert json.loads(run.stdout)["used_bytes"] < 16 * MiB, run.stdout
    back = tmp_path / "p1.raw"
    cli("restore", image, back)
    assert fsbuild.read_files(_reassemble(back, 0, pieces, tmp_path / "vol-back.raw"), "ntfs") == \
        fsbuild.read_files(vol, "ntfs")


def test_dynamic_volumes_served_over_nbd_and_fuse(tmp_path: Path) -> None:
    """``serve-proxy`` offers each readable dynamic volume as an NBD export and ``mount`` as a file, named
    as libldm's device-mapper names them; their bytes are the volume's, read through its pieces."""
    need_tools("nbdinfo", "nbdcopy", "fusermount3")
    disk, start, _volumes = _build(tmp_path, "mbr")
    image = tmp_path / "disk.img.zst"
    cli("image", disk, image)
    expected = {name: _reassemble(disk, start, pieces, tmp_path / f"{name}.want").read_bytes()
                for name, pieces in NTFS.items()}
    names = {name: f"ldm_vol_WIN-SRV-Dg0_{name}" for name in NTFS}
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", str(image), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        uri = re.search(r" at (\S+) ", proc.stdout.readline())
        assert uri, proc.stderr.read() if proc.stderr else ""
        listing = subprocess.run(["nbdinfo", "--list", uri.group(1)], capture_output=True, text=True,
                                 check=True).stdout
        assert all(f'export="{n}"' in listing for n in names.values()), listing
        assert "Volume3" not in listing and "Volume5" not in listing  # not readable from this disk
        subprocess.run(["nbdcopy", uri.group(1) + names["Volume2"], tmp_path / "v2.nbd"], check=True, timeout=60)
        assert (tmp_path / "v2.nbd").read_bytes() == expected["Volume2"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    cli("mount", image, mnt)
    try:
        assert sorted(os.listdir(mnt)) == ["disk.raw", *sorted(f"{n}.raw" for n in names.values()), "p1.raw"]
        for name, want in expected.items():
            assert (mnt / f"{names[name]}.raw").read_bytes() == want
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


def test_gpt_metadata_partition_device_alone(tmp_path: Path) -> None:
    """The GPT LDM metadata partition imaged by itself holds the database, no filesystem: refused in one
    line with that reason (auto: imaged in full); the data partition is mapped through it."""
    need_root()
    need_tools("losetup", "partx", "sgdisk")
    disk = tmp_path / "disk.raw"
    fsbuild.random_image(disk, 32, seed=10)
    L.write_disk(disk, 32 * MiB, L.Layout([L.Volume("Volume1", [L.Component([L.Piece(2048, 4096)])])]), "gpt")
    with _partitioned(disk, 2) as dev:
        refused = cli("image", "--used-only", f"{dev}p1", tmp_path / "p1.img", check=4)
        assert refused.stderr.count("\n") == 1 and "holding the LDM database" in refused.stderr, refused.stderr
        auto = cli("image", "--used-only=auto", "--json", f"{dev}p1", tmp_path / "p1a.img")
        assert json.loads(auto.stdout)["read_bytes"] == L.DB_SECTORS * L.SECTOR
        data = cli("image", "--used-only", "--json", f"{dev}p2", tmp_path / "p2.img")
        assert "Volume1: kept in full" in data.stderr  # random bytes: no filesystem in it


def test_a_flood_of_records_is_bounded() -> None:
    """A database claiming hundreds of thousands of tiny VBLKs (8 MiB of 32-byte entries) is refused after
    65,536 records, in well under a second, instead of parsing every one."""
    from imaging_utility.errors import UnsupportedError
    from imaging_utility.partitions import ldm

    config = bytearray(8 << 20)
    toc = 2 * 512
    config[toc : toc + 8] = b"TOCBLOCK"
    struct.pack_into(">8sHQQQ", config, toc + 36, b"config", 0, 17, 1472, 0)
    vmdb = 17 * 512
    struct.pack_into(">4sIII", config, vmdb, b"VMDB", 0, 32, 512)
    entry = struct.pack(">4sIIHH", b"VBLK", 1, 1, 0, 1) + bytes(16)
    start = vmdb + 512
    count = (len(config) - start) // 32
    config[start : start + count * 32] = entry * count
    began = time.monotonic()
    with pytest.raises(UnsupportedError, match="more than 65536 VBLK records"):
        ldm._records(bytes(config), 512)
    assert time.monotonic() - began < 2
