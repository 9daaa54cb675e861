"""Build real filesystem volumes at test time, and read their files back.

Every builder first fills the volume file with random bytes, then formats it,
so a map that misses a used range reads back as garbage, not as zeros.  Then
it copies in a file tree (``make_tree``), adds a fragmented file (interleaved
files, every other one deleted, then a large file written into the holes) and,
on NTFS, alternate data streams.  Each returns ``{relpath: sha256}`` of every
file on the volume (an NTFS stream is ``"relpath:stream"``).

Tools: NTFS ``mkntfs`` + ``ntfs-3g`` (root, FUSE); ext ``mke2fs -d`` + ``debugfs``
(no root); FAT ``mkfs.vfat`` + ``mtools`` (no root); exFAT ``mkfs.exfat`` +
``mount.exfat-fuse`` on a loop device (root; Debian package ``exfat-fuse``, since
the kernel here has no exfat driver).  Callers check tools and root with
``need_tools`` / ``need_root`` from conftest; see ``TOOLS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20

TOOLS: dict[str, tuple[str, ...]] = {
    "ntfs": ("mkntfs", "ntfs-3g", "ntfsfix"),
    "ext": ("mke2fs", "debugfs", "e2fsck"),
    "fat": ("mkfs.vfat", "mcopy", "mdel", "fsck.vfat"),
    "exfat": ("mkfs.exfat", "mount.exfat-fuse", "fsck.exfat", "losetup"),
}
NEEDS_ROOT = {"ntfs": True, "ext": False, "fat": False, "exfat": True}

FRAG_PIECE = 64 * 1024
FRAG_COUNT = 12
_ENV = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MTOOLS_SKIP_CHECK": "1"}


def _run(*cmd: str | os.PathLike[str], stdin: bytes | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, env=_ENV, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def hash_dir(root: Path, skip: tuple[str, ...] = ("lost+found",)) -> dict[str, str]:
    """``{relpath: sha256}`` of every regular file under ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) == root and d in skip)]
        for name in filenames:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = sha256_file(path)
    return out


def make_tree(dst: Path, *, seed: int = 1, large_mib: int = 3) -> dict[str, str]:
    """Write the standard test tree into ``dst``; return ``{relpath: sha256}``.

    Small and empty files, a large random file, a sparse file (holes around
    data), a deep directory chain, many files in one directory, and unicode
    names that need long names on FAT.
    """
    rnd = random.Random(seed)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "empty.txt").write_bytes(b"")
    (dst / "one.bin").write_bytes(b"\x01")
    (dst / "hello.txt").write_text("hello, world\n")
    (dst / "large.bin").write_bytes(rnd.randbytes(large_mib * MiB + 4097))
    with open(dst / "sparse.img", "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB + 123)
        f.write(rnd.randbytes(50_000))
        f.seek(3 * MiB)
        f.write(b"tail of a sparse file")
    deep = dst.joinpath(*(f"level{i}" for i in range(12)))
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("at the bottom\n")
    many = dst / "many"
    many.mkdir()
    for i in range(60):
        (many / f"file-{i:03d}.dat").write_bytes(rnd.randbytes(rnd.randrange(1, 20_000)))
    uni = dst / "ünïcødé-каталог"
    uni.mkdir()
    (uni / "日本語のファイル名.txt").write_text("こんにちは\n")
    (uni / "émoji-名前-long name.bin").write_bytes(rnd.randbytes(7_000))
    return hash_dir(dst)


def _fragment_payloads(seed: int) -> tuple[list[bytes], bytes]:
    rnd = random.Random(seed)
    fills = [rnd.randbytes(FRAG_PIECE) for _ in range(FRAG_COUNT)]
    # Bigger than four of the holes left by the deleted fills, smaller than all six.
    return fills, rnd.randbytes(FRAG_PIECE * 4 + FRAG_PIECE // 2 + 777)


def _fill_up(path: Path) -> None:
    """Write ``path`` until the volume is full, so new data can only go into holes."""
    block = random.Random(0).randbytes(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (MiB, 64 * 1024, 4096, 512):  # smaller and smaller, down to the last sector
            with contextlib.suppress(OSError):
                while os.write(fd, block[:size]) == size:
                    pass
            os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()


def _fragment_dir(mnt: Path, seed: int) -> None:
    """On a mounted volume: interleaved files, fill the volume, delete every other file, then
    write a file that fits only into several of the holes, and drop the filler."""
    frag = mnt / "frag"
    frag.mkdir()
    fills, large = _fragment_payloads(seed)
    for i, data in enumerate(fills):
        (frag / f"fill-{i:02d}").write_bytes(data)
    _fill_up(mnt / "filler")
    for i in range(0, FRAG_COUNT, 2):
        (frag / f"fill-{i:02d}").unlink()
    os.sync()
    (frag / "fragmented.bin").write_bytes(large)
    (mnt / "filler").unlink()


def _fragment_expected(seed: int) -> dict[str, str]:
    fills, large = _fragment_payloads(seed)
    out = {f"frag/fill-{i:02d}": hashlib.sha256(d).hexdigest() for i, d in enumerate(fills) if i % 2}
    out["frag/fragmented.bin"] = hashlib.sha256(large).hexdigest()
    return out


def random_image(path: Path, size_mib: int, seed: int = 7) -> None:
    """A file of ``size_mib`` MiB of random bytes: what a used disk's free space looks like."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(rnd.randbytes(MiB))


@contextlib.contextmanager
def _loop(path: Path, read_only: bool = False) -> Iterator[str]:
    dev = _run("losetup", "--find", "--show", *(["-r"] if read_only else []), path).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def mounted(path: Path, kind: str, read_only: bool = False) -> Iterator[Path]:
    """Mount an NTFS (ntfs-3g) or exFAT (exfat-fuse) volume file; root only."""
    mnt = Path(tempfile.mkdtemp(prefix=f"fsbuild-{kind}-"))
    opts = "ro" if read_only else "rw"
    try:
        if kind == "ntfs":
            _run("ntfs-3g", "-o", f"{opts},streams_interface=windows", path, mnt)
            try:
                yield mnt
            finally:
                _run("umount", mnt)
        elif kind == "exfat":
            with _loop(path, read_only) as dev:
                _run("mount.exfat-fuse", "-o", opts, dev, mnt)
                try:
                    yield mnt
                finally:
                    _run("umount", mnt)
        else:
            raise ValueError(f"cannot mount {kind}")
    finally:
        mnt.rmdir()


def _expected(files: Path | None, seed: int) -> dict[str, str]:
    return {**(hash_dir(files) if files else {}), **_fragment_expected(seed)}


def make_ntfs(path: Path, size_mib: int, files: Path | None, *, seed: int = 3,
              mkfs_opts: tuple[str, ...] = ()) -> dict[str, str]:
    """NTFS via ``mkntfs -F -Q``, filled through an ntfs-3g mount, with two alternate data streams."""
    random_image(path, size_mib, seed)
    _run("mkntfs", "-F", "-Q", "-L", "testvol", *mkfs_opts, path)
    expected = _expected(files, seed)
    with mounted(path, "ntfs") as mnt:
        if files:
            shutil.copytree(files, mnt, dirs_exist_ok=True)
        _fragment_dir(mnt, seed)
        if not (mnt / "hello.txt").exists():
            (mnt / "hello.txt").write_text("hello, world\n")
            expected["hello.txt"] = sha256_file(mnt / "hello.txt")
        streams = {"hello.txt:secret": b"hidden stream data\n" * 50,
                   "frag/fragmented.bin:big-stream": random.Random(seed).randbytes(70_000)}
        for name, data in streams.items():
            (mnt / name).write_bytes(data)
            expected[name] = hashlib.sha256(data).hexdigest()
    return expected


def make_ext(path: Path, size_mib: int, files: Path | None, kind: str = "ext4",
             mkfs_opts: tuple[str, ...] = (), *, seed: int = 4) -> dict[str, str]:
    """ext2/3/4 via ``mke2fs -t KIND -E nodiscard -d FILES``; fragmentation through ``debugfs -w``."""
    random_image(path, size_mib, seed)
    src = ["-d", str(files)] if files else []
    _run("mke2fs", "-q", "-F", "-t", kind, "-E", "nodiscard", "-L", "testvol", *mkfs_opts, *src, path)
    fills, large = _fragment_payloads(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cmds = ["mkdir /frag"]
        for i, data in enumerate(fills):
            Path(tmp, f"fill-{i:02d}").write_bytes(data)
            cmds.append(f"write {tmp}/fill-{i:02d} /frag/fill-{i:02d}")
        cmds += [f"rm /frag/fill-{i:02d}" for i in range(0, FRAG_COUNT, 2)]
        Path(tmp, "large").write_bytes(large)
        cmds.append(f"write {tmp}/large /frag/fragmented.bin")
        _run("debugfs", "-w", "-f", "-", path, stdin="\n".join(cmds).encode())
    return _expected(files, seed)


def make_fat(path: Path, size_mib: int, files: Path | None, fat_bits: int = 32,
             mkfs_opts: tuple[str, ...] = (), *, seed: int = 5) -> dict[str, str]:
    """FAT12/16/32 via ``mkfs.vfat -F BITS``; files copied with ``mcopy -s``."""
    random_image(path, size_mib, seed)
    _run("mkfs.vfat", "-F", str(fat_bits), "-n", "TESTVOL", *mkfs_opts, path)
    img = ["-i", str(path)]
    if files:
        for entry in sorted(files.iterdir()):
            _run("mcopy", "-s", "-p", *img, entry, "::/")
    fills, large = _fragment_payloads(seed)
    with tempfile.TemporaryDirectory() as tmp:
        _run("mmd", *img, "::/frag")
        for i, data in enumerate(fills):
            Path(tmp, f"fill-{i:02d}").write_bytes(data)
            _run("mcopy", *img, Path(tmp, f"fill-{i:02d}"), f"::/frag/fill-{i:02d}")
        for i in range(0, FRAG_COUNT, 2):
            _run("mdel", *img, f"::/frag/fill-{i:02d}")
        _reset_next_free_hint(path)
        Path(tmp, "large").write_bytes(large)
        _run("mcopy", *img, Path(tmp, "large"), "::/frag/fragmented.bin")
    return _expected(files, seed)


def _reset_next_free_hint(path: Path) -> None:
    """FAT32: point FSInfo's FSI_Nxt_Free at cluster 2, so mtools fills the holes first."""
    with open(path, "r+b") as f:
        boot = f.read(512)
        if boot[0x16:0x18] != b"\0\0":  # FATSz16 set: FAT12/16 have no FSInfo
            return
        fsinfo = int.from_bytes(boot[0x30:0x32], "little") * int.from_bytes(boot[0x0B:0x0D], "little")
        f.seek(fsinfo + 492)  # FSI_Nxt_Free (FSI_Free_Count is at 488)
        f.write((2).to_bytes(4, "little"))


def make_exfat(path: Path, size_mib: int, files: Path | None, mkfs_opts: tuple[str, ...] = (),
               *, seed: int = 6) -> dict[str, str]:
    """exFAT via ``mkfs.exfat``, filled through exfat-fuse on a loop device."""
    random_image(path, size_mib, seed)
    _run("mkfs.exfat", "-L", "testvol", *mkfs_opts, path)
    with mounted(path, "exfat") as mnt:
        if files:
            shutil.copytree(files, mnt, dirs_exist_ok=True)
        _fragment_dir(mnt, seed)
    return _expected(files, seed)


def read_files(path: Path, kind: str, streams: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relpath: sha256}`` of every file on the volume, read with the filesystem's own tools.

    ``kind`` is ``ntfs``/``exfat`` (read-only mount; root), ``ext`` (``debugfs rdump``) or ``fat``
    (``mcopy``).  NTFS ``streams`` (``"relpath:stream"``) are read too.
    """
    if kind in ("ntfs", "exfat"):
        with mounted(path, kind, read_only=True) as mnt:
            out = hash_dir(mnt)
            out.update({s: sha256_file(mnt / s) for s in streams})
            return out
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "ext":
            _run("debugfs", "-R", f"rdump / {tmp}", path)
        elif kind == "fat":
            if _run("mdir", "-b", "-i", path, "::/").strip():
                _run("mcopy", "-s", "-n", "-i", path, "::/*", tmp)
        else:
            raise ValueError(f"unknown kind {kind}")
        return hash_dir(Path(tmp))


def fsck(path: Path, kind: str) -> subprocess.CompletedProcess[str]:
    """The filesystem's checker in no-change mode; ``returncode == 0`` means clean."""
    cmd = {
        "ntfs": ["ntfsfix", "-n"],
        "ext": ["e2fsck", "-f", "-n"],
        "fat": ["fsck.vfat", "-n", "-V"],
        "exfat": ["fsck.exfat", "-n"],
    }[kind]
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, env=_ENV, timeout=120)
