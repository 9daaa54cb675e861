"""Build real XFS, Btrfs and LVM2 volumes at test time (root: loop devices and kernel mounts).

Every volume file is first filled with random bytes, then formatted by its own mkfs, mounted
through a loop device and aged: the standard tree (``fsbuild.make_tree``), a fragmented file
written into holes left by deleted ones, then a round of small files of which a third are deleted
before more are written, so free space is fragmented.  Each builder returns ``{relpath: sha256}``
as the kernel read the files back before unmounting.

LVM2: the kernel here has no device-mapper, so logical volumes are never activated.  The PV is
made by ``pvcreate``/``vgcreate``/``lvcreate`` (with activation disabled) on a loop device, each
LV's place is read from ``lvs`` (LVM's own report), and its filesystem is made through a loop
device at that offset (``losetup --offset --sizelimit``); an LV in several segments is formatted
in a scratch file and copied into its segments.  ``LVM_CONF`` keeps the LVM tools away from
every other device on the machine and from ``/etc/lvm/{backup,archive}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsbuild

MiB = 1 << 20
TOOLS = {
    "xfs": ("mkfs.xfs", "xfs_repair", "xfs_db", "losetup", "mount"),
    "btrfs": ("mkfs.btrfs", "btrfs", "losetup", "mount"),
    "lvm": ("pvcreate", "vgcreate", "lvcreate", "lvs", "pvck", "vgck", "losetup", "mkfs.xfs", "mke2fs"),
}
_ENV = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "LVM_SUPPRESS_FD_WARNINGS": "1"}


def run(*cmd: str | os.PathLike[str], check: bool = True, stdin: bytes | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, env=_ENV, timeout=180)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


@contextlib.contextmanager
def loop(path: Path, *, offset: int = 0, size: int | None = None, read_only: bool = False) -> Iterator[str]:
    cmd = ["losetup", "--find", "--show"]
    if offset:
        cmd += ["--offset", str(offset)]
    if size is not None:
        cmd += ["--sizelimit", str(size)]
    if read_only:
        cmd.append("-r")
    dev = run(*cmd, path).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def mounted(path: Path, *, offset: int = 0, size: int | None = None, read_only: bool = False) -> Iterator[Path]:
    """A kernel mount (XFS, Btrfs, ext4) of the volume file, or of a window of it."""
    mnt = Path(tempfile.mkdtemp(prefix="lfsbuild-"))
    try:
        with loop(path, offset=offset, size=size, read_only=read_only) as dev:
            opts = ["-o", "ro,norecovery"] if read_only else []
            try:
                run("mount", *opts, dev, mnt)
            except RuntimeError:
                if not read_only:
                    raise
                run("mount", "-o", "ro", dev, mnt)  # ext4 and btrfs take other option names
            try:
                yield mnt
            finally:
                run("umount", mnt)
    finally:
        mnt.rmdir()


def hash_regular(root: Path) -> dict[str, str]:
    """``{relpath: sha256}`` of the regular files under ``root``; symlinks are neither followed nor listed."""
    out: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if not path.is_symlink() and path.relative_to(root).parts[0] != "lost+found":
                out[path.relative_to(root).as_posix()] = fsbuild.sha256_file(path)
    return out


def age(mnt: Path, seed: int, rounds: int = 90) -> None:
    """Write small files, delete a third of them, write more: fragmented free space."""
    rnd = random.Random(seed)
    d = mnt / "aged"
    d.mkdir()
    for i in range(rounds):
        (d / f"a{i:03d}").write_bytes(rnd.randbytes(rnd.randrange(1, 48 * 1024)))
    os.sync()
    for i in range(0, rounds, 3):
        (d / f"a{i:03d}").unlink()
    os.sync()
    for i in range(rounds // 2):
        (d / f"b{i:03d}").write_bytes(rnd.randbytes(rnd.randrange(1, 96 * 1024)))


def speckle(mnt: Path, count: int, seed: int) -> None:
    """``count`` one-block files, every other one deleted: many small free extents (deep B+trees)."""
    rnd = random.Random(seed)
    d = mnt / "speckle"
    d.mkdir()
    for i in range(count):
        (d / f"s{i:05d}").write_bytes(rnd.randbytes(900))
    os.sync()
    for i in range(0, count, 2):
        (d / f"s{i:05d}").unlink()


def populate(mnt: Path, files: Path | None, seed: int, fill: bool = True, small: int = 0) -> dict[str, str]:
    if files is not None:
        shutil.copytree(files, mnt, dirs_exist_ok=True, symlinks=True)
    if fill:
        fsbuild._fragment_dir(mnt, seed)
    if small:
        speckle(mnt, small, seed)
    age(mnt, seed)
    os.sync()
    return hash_regular(mnt)


def make_xfs(path: Path, size_mib: int, files: Path | None, mkfs_opts: tuple[str, ...] = (), *,
             seed: int = 11, fill: bool = True, small: int = 0) -> dict[str, str]:
    fsbuild.random_image(path, size_mib, seed)
    run("mkfs.xfs", "-q", "-f", "--unsupported", "-L", "testvol", *mkfs_opts, path)
    with mounted(path) as mnt:
        return populate(mnt, files, seed, fill, small)


def _proto_lines(src: Path, depth: int, out: list[str], files: dict[str, Path], rel: str) -> None:
    for entry in sorted(src.iterdir()):
        name = entry.name
        if any(ch.isspace() for ch in name):
            continue  # the prototype file format splits on whitespace
        pad = " " * depth
        if entry.is_symlink():
            out.append(f"{pad}{name} l--777 0 0 {os.readlink(entry)}")  # not in the expected files
        elif entry.is_dir():
            out.append(f"{pad}{name} d--755 0 0")
            _proto_lines(entry, depth + 1, out, files, f"{rel}{name}/")
            out.append(f"{pad}$")
        else:
            out.append(f"{pad}{name} ---644 0 0 {entry}")
            files[f"{rel}{name}"] = entry


def make_xfs_v4(path: Path, size_mib: int, files: Path, *, seed: int = 14) -> dict[str, str]:
    """A v4 (no CRC) XFS, populated by ``mkfs.xfs -p PROTOFILE`` (this kernel cannot mount v4).

    Not aged: only mkfs can write it here.  Names with whitespace are left out (the prototype
    format cannot hold them)."""
    fsbuild.random_image(path, size_mib, seed)
    lines: list[str] = []
    found: dict[str, Path] = {}
    _proto_lines(files, 1, lines, found, "")
    with tempfile.NamedTemporaryFile("w", suffix=".proto") as proto:
        proto.write("\n".join(["/dev/null", "0 0", "d--755 0 0", *lines, "$", ""]))
        proto.flush()
        run("mkfs.xfs", "-q", "-f", "--unsupported", "-m", "crc=0", "-L", "testvol", "-p", proto.name, path)
    return {rel: fsbuild.sha256_file(p) for rel, p in found.items() if not p.is_symlink()}


def read_tree_dissect(path: Path) -> dict[str, str]:
    """``{relpath: sha256}`` of every regular file, read by dissect.xfs (for what the kernel cannot mount)."""
    import hashlib
    import stat

    from dissect.xfs import XFS

    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        fs = XFS(fh)

        def walk(node: object, rel: str) -> None:
            for name, child in node.listdir().items():  # type: ignore[attr-defined]
                if name in (".", ".."):
                    continue
                if child.filetype == stat.S_IFDIR:
                    walk(child, f"{rel}{name}/")
                elif child.filetype == stat.S_IFREG:
                    out[f"{rel}{name}"] = hashlib.sha256(child.open().read()).hexdigest()

        walk(fs.root, "")
    return out


def make_btrfs(path: Path, size_mib: int, files: Path | None, mkfs_opts: tuple[str, ...] = (), *,
               seed: int = 12, fill: bool = False, small: int = 0) -> dict[str, str]:
    """Not filled up by default: a Btrfs whose chunks are all full cannot take the fragmented file."""
    fsbuild.random_image(path, size_mib, seed)
    run("mkfs.btrfs", "-q", "-f", "-L", "testvol", *mkfs_opts, path)
    with mounted(path) as mnt:
        return populate(mnt, files, seed, fill, small)


def read_tree(path: Path, *, offset: int = 0, size: int | None = None) -> dict[str, str]:
    """``{relpath: sha256}`` through a read-only kernel mount."""
    with mounted(path, offset=offset, size=size, read_only=True) as mnt:
        return hash_regular(mnt)


def check(path: Path, kind: str) -> subprocess.CompletedProcess[str]:
    """The filesystem's own checker in no-change mode; ``returncode == 0`` means clean."""
    cmd = {"xfs": ["xfs_repair", "-n", "-f"], "btrfs": ["btrfs", "check", "--readonly"],
           "ext4": ["e2fsck", "-f", "-n"]}[kind]
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, env=_ENV, timeout=180)


# --- LVM2 ------------------------------------------------------------------------------------------
def lvm_conf(dev: str) -> str:
    return ("global { activation = 0 } backup { backup = 0 archive = 0 } "
            f'devices {{ filter = [ "a|^{dev}$|", "r|.*|" ] global_filter = [ "a|^{dev}$|", "r|.*|" ] '
            "obtain_device_list_from_udev = 0 scan_lvs = 0 use_devicesfile = 0 }")


def lvm(dev: str, *args: str, check_rc: bool = True) -> str:
    return run(args[0], "--config", lvm_conf(dev), *args[1:], check=check_rc)


@dataclass
class LvPlace:
    name: str
    size: int
    pieces: list[tuple[int, int]]  # (PV byte offset, length) of each segment, in LV order


def lv_places(dev: str, vg: str) -> dict[str, LvPlace]:
    """Where each LV lies on the PV, from LVM's own report (not from our parser)."""
    pv = json.loads(lvm(dev, "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pe_start"))
    pe_start = int(pv["report"][0]["pv"][0]["pe_start"])
    vgr = json.loads(lvm(dev, "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_extent_size",
                         vg))
    extent = int(vgr["report"][0]["vg"][0]["vg_extent_size"])
    rep = json.loads(lvm(dev, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                         "lv_name,lv_size,seg_start,seg_pe_ranges", "--segments", vg))
    out: dict[str, LvPlace] = {}
    for row in rep["report"][0]["seg"]:
        place = out.setdefault(row["lv_name"], LvPlace(row["lv_name"], int(row["lv_size"]), []))
        for rng in row["seg_pe_ranges"].split():
            first, last = (int(x) for x in rng.rsplit(":", 1)[1].split("-"))
            place.pieces.append((pe_start + first * extent, (last - first + 1) * extent))
    return out


def extract_lv(pv: Path, place: LvPlace, dest: Path) -> Path:
    """The LV's bytes, segments concatenated, as a file."""
    with open(pv, "rb") as src, open(dest, "wb") as out:
        for off, n in place.pieces:
            src.seek(off)
            out.write(src.read(n))
    return dest


def write_lv(pv: Path, place: LvPlace, data: Path) -> None:
    with open(data, "rb") as src, open(pv, "r+b") as out:
        for off, n in place.pieces:
            out.seek(off)
            out.write(src.read(n))


@dataclass
class LvmVolume:
    path: Path
    vg: str
    places: dict[str, LvPlace]
    expected: dict[str, dict[str, str]]  # LV name -> files
    fstypes: dict[str, str]


def make_lvm(path: Path, size_mib: int, files: Path | None, *, seed: int = 13) -> LvmVolume:
    """A PV with an XFS LV, an ext4 LV in two segments, an LV with no filesystem and free extents.

    Layout (4 MiB extents): ``data`` (XFS, 64 MiB), ``home`` (ext4, 24 + 8 MiB in two segments, around
    ``raw``), ``raw`` (8 MiB of random bytes, no filesystem), then free extents.
    """
    fsbuild.random_image(path, size_mib, seed)
    vg = f"iutest{uuid.uuid4().hex[:8]}"
    with loop(path) as dev:
        lvm(dev, "pvcreate", "-ff", "-y", dev)
        lvm(dev, "vgcreate", vg, dev)
        for name, size in (("data", 64), ("home", 24), ("raw", 8)):
            lvm(dev, "lvcreate", "-an", "-Zn", "-Wn", "-y", "-n", name, "-L", f"{size}M", vg)
        lvm(dev, "lvextend", "-L", "+8M", f"{vg}/home")
        places = lv_places(dev, vg)
        lvm(dev, "vgck", vg)
    expected: dict[str, dict[str, str]] = {}
    data = places["data"]
    assert len(data.pieces) == 1, data
    off, size = data.pieces[0]
    with loop(path, offset=off, size=size) as dev:
        run("mkfs.xfs", "-q", "-f", "--unsupported", "-L", "lvdata", dev)
    with mounted(path, offset=off, size=size) as mnt:
        expected["data"] = populate(mnt, files, seed, fill=False)
    home = places["home"]
    assert len(home.pieces) == 2, home
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp, "home.img")
        fsbuild.random_image(scratch, home.size // MiB, seed + 1)
        run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-L", "lvhome", scratch)
        with mounted(scratch) as mnt:
            expected["home"] = populate(mnt, None, seed + 1, fill=False)
        write_lv(path, home, scratch)
    return LvmVolume(path, vg, places, expected, {"data": "xfs", "home": "ext4"})


def lvm_check(path: Path, vg: str) -> None:
    """``pvck`` and ``vgck`` on the PV file (through a read-only loop device) must pass."""
    with loop(path, read_only=True) as dev:
        lvm(dev, "pvck", dev)
        lvm(dev, "vgck", vg)


def read_lv(vol: LvmVolume, path: Path, name: str, tmp: Path) -> tuple[dict[str, str], int]:
    """(files, checker return code) of LV ``name`` in the PV file ``path``."""
    lv = extract_lv(path, vol.places[name], tmp / f"{name}.lv")
    try:
        kind = vol.fstypes[name]
        return read_tree(lv), check(lv, kind).returncode
    finally:
        lv.unlink()
