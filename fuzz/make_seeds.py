"""Build the fuzzers' base volumes (``fuzz/bases/*.zst``) and seed corpora (``fuzz/corpus/<harness>/``).

Real structures made by their own tools: mkntfs + ntfs-3g, mke2fs -d, mkfs.fat + mtools, mkfs.exfat +
exfat-fuse (root, for the two mounts), sfdisk and sgdisk for partition tables, and images written by
this tool; mkfs.xfs, mkfs.btrfs, pvcreate/vgcreate/lvcreate (activation off) and mkswap for the Linux
server filesystems, Linux MD RAID-1 members around two of those (``… make_seeds.py md``), and an NTFS
volume with WSL's special files (``… make_seeds.py wsl``).  Run once
(``.venv/bin/python fuzz/make_seeds.py``, or ``… make_seeds.py linuxfs`` for those alone); the results are
committed.  Free space is
zero so the bases compress to little.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import zstandard

FUZZ = Path(__file__).resolve().parent
sys.path.insert(0, str(FUZZ.parent / "tests"))
sys.path.insert(0, str(FUZZ.parent / "tests" / "format"))

MIB = 1 << 20


def run(*args: object) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def text(n: int, seed: int) -> bytes:
    line = b"%06d fuzz seed file %d, imaging-utility\n"
    return b"".join(line % (i, seed) for i in range(n // 36 + 1))[:n]


def fill_tree(root: Path) -> None:
    """Small and larger files, nested directories, a directory with many entries, a symlink."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "many").mkdir(exist_ok=True)
    (root / "hello.txt").write_bytes(b"hello, world\n")
    (root / "docs" / "big.bin").write_bytes(text(300_000, 1))
    (root / "docs" / "deep" / "mid.txt").write_bytes(text(9000, 2))
    (root / "docs" / "deep" / "deeper" / "tiny").write_bytes(b"x")
    for i in range(60):
        (root / "many" / f"entry-{i:03d}-with-a-long-name.txt").write_bytes(text(100 + i, i))


def save_base(name: str, raw: bytes) -> None:
    (FUZZ / "bases").mkdir(exist_ok=True)
    (FUZZ / "bases" / f"{name}.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))


def seed(harness: str, data: bytes) -> None:
    folder = FUZZ / "corpus" / harness
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


def filesystems(tmp: Path) -> list[str]:
    from fsbuild import mounted

    files = tmp / "files"
    fill_tree(files)
    names = []
    vol = tmp / "ntfs.raw"
    vol.write_bytes(bytes(4 * MIB))
    run("mkntfs", "-F", "-Q", "-L", "FUZZ", "-c", "1024", vol)
    with mounted(vol, "ntfs") as mnt:
        shutil.copytree(files, mnt, dirs_exist_ok=True, symlinks=True)
        (mnt / "hello.txt:stream").write_bytes(b"an alternate data stream\n")
    save_base("ntfs", vol.read_bytes())
    names.append("ntfs")
    (files / "link").symlink_to("docs/deep/mid.txt")
    for kind, size, opts in (("ext4", 4, ("-b", "1024", "-N", "256", "-J", "size=1")),
                             ("ext2", 2, ("-b", "1024", "-N", "128"))):
        vol = tmp / f"{kind}.raw"
        vol.write_bytes(bytes(size * MIB))
        run("mke2fs", "-q", "-F", "-t", kind, "-E", "nodiscard,root_owner=0:0", "-L", "FUZZ", *opts, "-d", files, vol)
        save_base(kind, vol.read_bytes())
        names.append(kind)
    (files / "link").unlink()
    for kind, size, opts in (("fat12", 2, ("-F", "12")), ("fat32", 34, ("-F", "32", "-s", "1"))):
        vol = tmp / f"{kind}.raw"
        vol.write_bytes(bytes(size * MIB))
        run("mkfs.fat", *opts, "-n", "FUZZ", "-i", "00c0ffee", vol)
        run("mcopy", "-s", "-i", vol, *sorted(files.iterdir()), "::/")
        save_base(kind, vol.read_bytes())
        names.append(kind)
    vol = tmp / "exfat.raw"
    vol.write_bytes(bytes(8 * MIB))
    run("mkfs.exfat", "-L", "FUZZ", vol)
    with mounted(vol, "exfat") as mnt:
        shutil.copytree(files, mnt, dirs_exist_ok=True)
    save_base("exfat", vol.read_bytes())
    names.append("exfat")
    return names


def _lfs() -> object:
    sys.path.insert(0, str(FUZZ.parent / "tests" / "linuxfs"))
    import lfsbuild

    return lfsbuild


def _fill_linux(mnt: Path, files: Path) -> None:
    """The seed tree plus what only a Linux filesystem holds: hard links, a fragmented file (a B+tree
    or many extent items), a sparse file, a long symlink, extended attributes, a directory large enough
    to leave the inode (XFS leaf and node directories)."""
    shutil.copytree(files, mnt, dirs_exist_ok=True, symlinks=True)
    os.link(mnt / "hello.txt", mnt / "hello-link")
    (mnt / "long-link").symlink_to("x" * 200)
    with open(mnt / "sparse", "wb") as f:
        f.seek(3 * MIB)
        f.write(b"end of a sparse file\n")
    os.setxattr(mnt / "hello.txt", "user.fuzz", b"an extended attribute")
    frag = mnt / "fragmented"
    with open(frag, "wb") as f:
        for i in range(96):  # interleaved with a filler, synced: one extent per piece
            f.write(text(4096, i))
            f.flush()
            os.fsync(f.fileno())
            (mnt / f"filler-{i}").write_bytes(b"f" * 4096)
            os.sync()
    for i in range(0, 96, 2):
        (mnt / f"filler-{i}").unlink()
    (mnt / "big-dir").mkdir()
    for i in range(400):
        (mnt / "big-dir" / f"name-{i:04d}-{'y' * 40}").write_bytes(b"")
    os.sync()


def linuxfs(tmp: Path) -> list[str]:
    """XFS v5 and v4, Btrfs (single and mixed block groups, a subvolume, compressed extents), an LVM2
    PV with an XFS and a two-segment ext4 LV, Linux swap."""
    lfs: Any = _lfs()
    files = tmp / "files"
    fill_tree(files)
    names = []
    vol = tmp / "xfs.raw"
    vol.write_bytes(bytes(16 * MIB))
    run("mkfs.xfs", "-q", "-f", "--unsupported", "-m", "rmapbt=1,reflink=1", "-L", "FUZZ", vol)
    with lfs.mounted(vol) as mnt:
        _fill_linux(mnt, files)
    save_base("xfs", vol.read_bytes())
    names.append("xfs")
    vol = tmp / "xfs4.raw"
    vol.write_bytes(bytes(16 * MIB))
    lines: list[str] = []
    lfs._proto_lines(files, 1, lines, {}, "")
    proto = tmp / "xfs4.proto"
    proto.write_text("\n".join(["/dev/null", "0 0", "d--755 0 0", *lines, "$", ""]))
    run("mkfs.xfs", "-q", "-f", "--unsupported", "-m", "crc=0", "-L", "FUZZ", "-p", proto, vol)
    save_base("xfs4", vol.read_bytes())
    names.append("xfs4")
    for name, size, opts in (("btrfs", 114, ()), ("btrfs-mixed", 16, ("-M",))):
        vol = tmp / f"{name}.raw"
        vol.write_bytes(bytes(size * MIB))
        run("mkfs.btrfs", "-q", "-f", "-L", "FUZZ", *opts, vol)
        with lfs.mounted(vol) as mnt:
            run("btrfs", "subvolume", "create", mnt / "sub")
            (mnt / "sub" / "in-sub.txt").write_bytes(text(5000, 7))
            for algo in ("zlib", "lzo", "zstd"):
                (mnt / algo).mkdir()
                run("btrfs", "property", "set", mnt / algo, "compression", algo)
                (mnt / algo / "text").write_bytes(text(200_000, 3))
            _fill_linux(mnt, files)
            run("btrfs", "subvolume", "set-default", mnt / "sub")
        save_base(name, vol.read_bytes())
        names.append(name)
    vol = tmp / "lvm.raw"
    vol.write_bytes(bytes(40 * MIB))
    with lfs.loop(vol) as dev:
        vg = "fuzzvg"
        lfs.lvm(dev, "pvcreate", "-ff", "-y", dev)
        lfs.lvm(dev, "vgcreate", "-s", "1M", vg, dev)
        for lv, size in (("data", 16), ("home", 3), ("raw", 1)):
            lfs.lvm(dev, "lvcreate", "-an", "-Zn", "-Wn", "-y", "-n", lv, "-L", f"{size}M", vg)
        lfs.lvm(dev, "lvextend", "-L", "+3M", f"{vg}/home")
        places = lfs.lv_places(dev, vg)
    (off, size), = places["data"].pieces
    with lfs.loop(vol, offset=off, size=size) as dev:
        run("mkfs.xfs", "-q", "-f", "--unsupported", "-L", "lvdata", dev)
    with lfs.mounted(vol, offset=off, size=size) as mnt:
        shutil.copytree(files, mnt, dirs_exist_ok=True, symlinks=True)
    home = tmp / "home.raw"
    home.write_bytes(bytes(places["home"].size))
    run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard,root_owner=0:0", "-b", "1024", "-d", files, home)
    lfs.write_lv(vol, places["home"], home)
    save_base("lvm", vol.read_bytes())
    names.append("lvm")
    vol = tmp / "swap.raw"
    vol.write_bytes(bytes(1 * MIB))
    run("mkswap", "-L", "FUZZ", vol)
    save_base("swap", vol.read_bytes())
    names.append("swap")
    return names


def linuxfs_seeds(names: list[str]) -> None:
    for i, name in enumerate(names):
        seed("linuxfs", bytes([i, 0]))  # the pristine volume
        seed("linuxfs", bytes([i, 200]))  # the same, cut short
        seed("linuxfs", bytes([i | 0x80, 0]) + struct.pack("<IB", 0, 0) + b"\xff")  # checksums recomputed
        if name != "swap":
            seed("linuxfs", bytes([i | 0x80, 0]) + struct.pack("<IB", 65536 + 4, 0) + b"\0")
            for k in range(4):  # a byte in one of the first metadata blocks (fuzz_linuxfs.patches)
                seed("linuxfs", bytes([i | 0x80, 0]) + struct.pack("<IB", 1 << 31 | k << 16 | 40, 0) + b"\x7f")


def fs_seeds(names: list[str]) -> None:
    for i in range(len(names)):
        if names[i] in ("ext4", "exfat"):  # checksums recomputed after patching
            seed("filesystems", bytes([i | 0x80, 0]) + struct.pack("<IB", 1024 + 88, 1) + b"\0\0")
        seed("filesystems", bytes([i, 0]))  # the pristine volume
        seed("filesystems", bytes([i, 200]))  # the same, cut short
        seed("filesystems", bytes([i, 0]) + struct.pack("<IB", 0, 0) + b"\xff")  # a damaged first byte
        seed("filesystems", bytes([i, 0]) + struct.pack("<IB", 1024 + 88, 1) + b"\0\0")


def to_patches(raw: bytes) -> bytes:
    """The non-zero parts of ``raw`` as ``fuzz/_common.patches`` records."""
    out = bytearray()
    pos = 0
    while pos < len(raw):
        if not raw[pos]:
            nxt = len(raw) - len(raw[pos:].lstrip(b"\0"))
            pos = nxt
            continue
        piece = raw[pos : pos + 256].rstrip(b"\0")
        out += struct.pack("<IB", pos, len(piece) - 1) + piece
        pos += len(piece)
    return bytes(out)


def partition_seeds(tmp: Path) -> None:
    layouts = {
        "mbr": ["sfdisk", "--quiet"], "gpt": ["sfdisk", "--quiet"],
    }
    scripts = {
        "mbr": "label: dos\n,2M,83\n,2M,7\n,,5\n,1M,83\n,1M,b\n",
        "gpt": "label: gpt\nsize=2M, type=L, name=root\nsize=2M, type=U\ntype=L\n",
    }
    for name, script in scripts.items():
        disk = tmp / f"{name}.raw"
        disk.write_bytes(bytes(10 * MIB))
        subprocess.run([*layouts[name], str(disk)], input=script.encode(), check=True, capture_output=True)
        raw = disk.read_bytes()
        size_field = struct.pack("<I", len(raw) // 512 - 1)
        for flags in (b"\0", b"\1", b"\2", b"\3"):  # 512/4096-byte sectors, GPT CRCs as is/recomputed
            seed("partitions", flags + size_field + to_patches(raw))
    seed("partitions", b"\0" + struct.pack("<I", 2047))
    ldm_seeds(tmp)


def ldm_seeds(tmp: Path) -> None:
    """Windows dynamic disks (``tests/partitions/ldmbuild.py``; no Windows here), MBR and GPT, 8 MiB: a simple,
    a two-piece spanned (its record over two VBLKs), a striped and a mirrored volume."""
    sys.path.insert(0, str(FUZZ.parent / "tests" / "partitions"))
    import ldmbuild as lb

    layout = lb.Layout([
        lb.Volume("Volume1", [lb.Component([lb.Piece(64, 2048)])]),
        lb.Volume("Volume2", [lb.Component([lb.Piece(6000, 1024), lb.Piece(3000, 1024)])], hint="E:\\Shares\\Data"),
        lb.Volume("Volume3", [lb.Component([lb.Piece(8000, 512), lb.Piece(0, 512, "Disk2")], kind=1)]),
        lb.Volume("Volume4", [lb.Component([lb.Piece(9000, 1024)]), lb.Component([lb.Piece(64, 1024, "Disk2")])]),
    ], other_disks=["Disk2"])
    for scheme in ("mbr", "gpt"):
        disk = tmp / f"ldm-{scheme}.raw"
        disk.write_bytes(b"")
        lb.write_disk(disk, 8 * MIB, layout, scheme)
        raw = disk.read_bytes()
        seed("partitions", b"\0" + struct.pack("<I", len(raw) // 512 - 1) + to_patches(raw))
    import imsmbuild  # Intel RST members: a RAID-1 volume with a GPT in it, and a matrix set

    for volumes, sector in (([imsmbuild.Vol("Volume0", 0, 6 * MIB)], 512),
                            ([imsmbuild.Vol("Mirror", 0, 3 * MIB), imsmbuild.Vol("Stripe", 3 * MIB, 8 * MIB, level=0)],
                             512),
                            ([imsmbuild.Vol("Sys", 0, 3 * MIB), imsmbuild.Vol("Data", 3 * MIB, 4 * MIB)], 4096)):
        disk, volume = tmp / "imsm.raw", tmp / "imsm-volume.raw"
        volume.write_bytes(bytes(volumes[0].size))  # the first volume's own GPT, at the disk's start
        subprocess.run(["sgdisk", "-n1:64:0", str(volume)], check=True, capture_output=True)
        disk.write_bytes(volume.read_bytes() + bytes(8 * MIB - volumes[0].size))
        imsmbuild.write(disk, volumes, sector=sector)  # 4096: a 4Kn member, seen as a file of 512-byte sectors
        raw = disk.read_bytes()
        seed("partitions", b"\0" + struct.pack("<I", len(raw) // 512 - 1) + to_patches(raw))


def image_seeds(tmp: Path) -> None:
    from golden_lib import GOLDEN, image_paths

    for path in sorted(GOLDEN.glob("*.img*")):
        if path.suffix == ".img" or path.name.endswith(".001"):
            raw = b"".join(p.read_bytes() for p in image_paths(path.name.split(".img")[0]))
            if len(raw) < 64 * 1024:
                for mode in (b"\0", b"\1"):  # as is / checksums and seek table recomputed
                    seed("image", mode + raw)
                    seed("image", mode + raw[: len(raw) * 2 // 3])  # an interrupted capture (resume scan)
                meta_seeds(raw)


def meta_seeds(raw: bytes) -> None:
    n = struct.unpack_from("<I", raw, len(raw) - 9)[0]
    table = len(raw) - 17 - 12 * n
    off = 0
    for k in range(n):
        csize, dsize, _ = struct.unpack_from("<III", raw, table + 8 + 12 * k)
        magic = struct.unpack_from("<I", raw, off)[0]
        kind = {0x184D2A51: 0, 0x184D2A52: 1, 0x184D2A53: 2}.get(magic)
        if not dsize and kind is not None:
            seed("metadata", bytes([kind]) + raw[off + 8 : off + csize])
            seed("metadata", bytes([kind | 4]) + raw[off + 8 : off + csize])  # CRC recomputed
        off += csize


def server_seeds() -> None:
    """Client byte streams: NBD handshakes with options and requests, IMDPROXY request sequences."""
    opt = lambda code, data=b"": struct.pack(">QII", 0x49484156454F5054, code, len(data)) + data  # noqa: E731
    req = lambda cmd, off, n, flags=0: struct.pack(">IHHQQI", 0x25609513, flags, cmd, 7, off, n)  # noqa: E731
    go = struct.pack(">I", 0) + struct.pack(">H", 2) + struct.pack(">HH", 0, 3)
    meta = struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation"
    hello = struct.pack(">I", 3)
    seed("servers", b"\0" + hello + opt(8) + opt(10, meta) + opt(9, meta) + opt(7, go)
         + req(0, 0, 4096) + req(7, 0, 1 << 20) + req(0, 65536, 70000, 1) + req(0, 1 << 40, 10) + req(2, 0, 0))
    seed("servers", b"\0" + hello + opt(3) + opt(6, go) + opt(1, b"")
         + req(0, 0, 512) + req(1, 0, 4) + b"abcd" + req(3, 0, 0) + req(5, 0, 100) + req(2, 0, 0))
    seed("servers", b"\0" + hello + opt(2))
    imd = lambda *f: b"".join(struct.pack("<Q", v) for v in f)  # noqa: E731
    seed("servers", b"\1" + imd(1) + imd(2, 0, 4096) + imd(2, 65536, 200000) + imd(3, 0, 8) + b"12345678"
         + imd(0) + imd(2, 1 << 50, 1) + imd(5))
    seed("servers", b"\1" + imd(9, 1, 2))


def wsl_base(tmp: Path) -> str:
    """An NTFS volume with WSL's special files (reparse points) and $LX* extended attributes, written by
    ntfs-3g with ``special_files=wsl``."""
    import os

    vol = tmp / "ntfs-wsl.raw"
    vol.write_bytes(bytes(4 * MIB))
    run("mkntfs", "-F", "-Q", "-L", "FUZZ", "-c", "1024", vol)
    mnt = tmp / "wsl-mnt"
    mnt.mkdir()
    run("ntfs-3g", "-o", "rw,special_files=wsl", vol, mnt)
    try:
        os.mkfifo(mnt / "fifo")
        os.mknod(mnt / "tty", 0o20644, os.makedev(4, 5))
        os.mknod(mnt / "disk", 0o60644, os.makedev(8, 1))
        os.mknod(mnt / "sock", 0o140644)
        os.symlink("fifo", mnt / "link")
        (mnt / "file.txt").write_bytes(text(3000, 9))
    finally:
        run("umount", mnt)
    save_base("ntfs-wsl", vol.read_bytes())
    return "ntfs-wsl"


def md_bases(tmp: Path) -> list[str]:
    """Linux MD RAID-1 members around two of the bases above: superblock 1.2 before the LVM2 PV, 1.0 after
    the mixed Btrfs (``tests/linuxfs/mdbuild.py`` writes them; there is no md driver to make them)."""
    sys.path.insert(0, str(FUZZ.parent / "tests" / "linuxfs"))
    import mdbuild

    names = []
    for name, version, inner in (("md12-lvm", "1.2", "lvm"), ("md10-btrfs", "1.0", "btrfs-mixed")):
        data = zstandard.ZstdDecompressor().decompress((FUZZ / "bases" / f"{inner}.zst").read_bytes(),
                                                        max_output_size=128 * MIB)
        begin = MIB if version == "1.2" else 0
        member = tmp / f"{name}.raw"
        member.write_bytes(bytes(begin) + data + bytes(12 << 10))
        mdbuild.write_sb1(member, version, 1, 2, begin, len(data), name="fuzz:0")
        save_base(name, member.read_bytes())
        names.append(name)
    return names


def wof_seeds() -> None:
    """Chunks and whole streams compressed by wimlib (the peer implementation of WOF's formats)."""
    import wimlib

    data = text(70_000, 5)
    for i, algorithm in enumerate(("XPRESS4K", "XPRESS8K", "XPRESS16K", "LZX")):  # fuzz_wof.py's order
        _n, kind, chunk = wimlib.ALGORITHMS[algorithm]
        piece = data[: chunk - 100]
        packed = wimlib.compress(kind, chunk, piece)
        assert packed is not None
        seed("wof", bytes([i & 3]) + (len(piece) - 1).to_bytes(2, "little") + packed)
        stream = wimlib.wof_stream(algorithm, data[:40_000])
        seed("wof", bytes([4 | i & 3]) + (40_000).to_bytes(2, "little") + stream)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("make_seeds.py needs root (ntfs-3g and exfat-fuse mounts)")
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not only or "linuxfs" in only:
            names = linuxfs(tmp)
            linuxfs_seeds(names)
            (FUZZ / "bases" / "linuxfs.txt").write_text("\n".join(names) + "\n")
        if not only or "linuxfs" in only or "md" in only:
            known = (FUZZ / "bases" / "linuxfs.txt").read_text().split()
            md = md_bases(tmp)
            names = known + [n for n in md if n not in known]
            linuxfs_seeds(names)
            (FUZZ / "bases" / "linuxfs.txt").write_text("\n".join(names) + "\n")
        if not only or "wof" in only:
            wof_seeds()
        if not only:
            names = filesystems(tmp)
            fs_seeds(names)
            (FUZZ / "bases" / "filesystems.txt").write_text("\n".join(names) + "\n")
        if not only or "wsl" in only:  # after the others: its index comes last
            known = (FUZZ / "bases" / "filesystems.txt").read_text().split()
            names = known + [n for n in [wsl_base(tmp)] if n not in known]
            fs_seeds(names)
            (FUZZ / "bases" / "filesystems.txt").write_text("\n".join(names) + "\n")
        if "ldm" in only:
            ldm_seeds(tmp)
        if only:
            return
        partition_seeds(tmp)
        image_seeds(tmp)
        server_seeds()
    for folder in sorted((FUZZ / "corpus").iterdir()):
        print(folder.name, len(list(folder.iterdir())), "seeds")
    for base in sorted((FUZZ / "bases").iterdir()):
        print(base.name, base.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
