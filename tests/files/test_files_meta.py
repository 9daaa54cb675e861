"""extract restores what Linux files are: the result equals ``cp -a`` from a read-only kernel (ext4) or
ntfs-3g (NTFS) mount of the same volume, entry by entry; ``ls -l`` shows the same types, modes, owners and
link targets.  Runs as root, as the issue asks ("extract as root")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from files import metatrees as mt
from files.filehelpers import need


@pytest.fixture(scope="module")
def ext4_vol(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the ext4 volume's image, cp -a of its read-only kernel mount)."""
    need_root()
    need_tools("mkfs.ext4", "setfacl", "cp")
    base = tmp_path_factory.mktemp("ext4meta")
    vol = base / "ext4.raw"
    mt.ext4_tree(vol)
    mt.copy_from_mount(vol, "ext4", base / "ref")
    image = base / "ext4.img"
    cli("image", "--used-only", "--chunk-size", "256K", vol, image)
    return image, base / "ref"


@pytest.fixture(scope="module")
def ntfs_vol(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need("ntfs")
    base = tmp_path_factory.mktemp("ntfsmeta")
    vol = base / "ntfs.raw"
    mt.ntfs_tree(vol)
    mt.copy_from_mount(vol, "ntfs", base / "ref")
    return vol, base / "ref"


def test_ext4_extract_equals_cp_a(tmp_path: Path, ext4_vol: tuple[Path, Path]) -> None:
    image, ref = ext4_vol
    out = tmp_path / "out"
    proc = cli("extract", image, "/", out)
    assert "3 symlinks, 1 hard links, 5 special files" in proc.stdout, proc.stdout
    secret = (out / "home" / "ann" / "secret.txt").stat()  # before anything reads it (relatime)
    assert (secret.st_atime_ns, secret.st_mtime_ns) == (mt.OLD_ATIME, mt.OLD_MTIME)
    assert mt.compare(ref, out) == []
    # what compare checks, spelled out once: these are the entries the issue names
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o4755
    assert (out / "home" / "ann" / "secret.txt").stat().st_uid == 1000
    assert os.readlink(out / "srv" / "rel-link") == "../home/ann/secret.txt"
    assert (out / "pair-a").stat().st_ino == (out / "srv" / "pair-b").stat().st_ino
    assert stat.S_ISFIFO((out / "fifo").lstat().st_mode) and stat.S_ISSOCK((out / "srv" / "sock").lstat().st_mode)
    assert os.major((out / "bigdev").lstat().st_rdev) == 300 and os.minor((out / "bigdev").lstat().st_rdev) == 70000
    assert os.getxattr(out / "home" / "ann" / "secret.txt", "security.label") == b"top-secret"
    acl = subprocess.run(["getfacl", "-cp", out / "srv" / "shared.txt"], capture_output=True, text=True).stdout
    assert "user:1234:rw-" in acl and "group:55:r--" in acl


def test_ext4_ls_long_shows_what_linux_shows(ext4_vol: tuple[Path, Path]) -> None:
    """Every line of ``ls -lR``: the type and mode string, links, owner and group, device numbers and link
    target that ``os.lstat`` gives for the same entry of the kernel-mounted copy."""
    image, ref = ext4_vol
    seen = 0
    for line in cli("ls", "-lR", image, "/").stdout.splitlines():
        mode, links, uid, gid = line.split()[:4]
        path = line.split(" -> ")[0].split()[-1].rstrip("/")
        st = (ref / path.lstrip("/")).lstat()
        assert (mode, int(uid), int(gid)) == (stat.filemode(st.st_mode), st.st_uid, st.st_gid), line
        if not stat.S_ISDIR(st.st_mode):
            assert int(links) == st.st_nlink, line
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert f" {os.major(st.st_rdev)}, {os.minor(st.st_rdev)} " in line, line
        if stat.S_ISLNK(st.st_mode):
            assert line.endswith(f" -> {os.readlink(ref / path.lstrip('/'))}"), line
        seen += 1
    assert seen == len(mt.describe(ref))
    entry = json.loads(cli("ls", "--json", image, "/null").stdout)[0]
    assert entry["type"] == "char" and entry["rdev"] == [1, 3] and entry["uid"] == 0


def test_ntfs_extract_equals_cp_a_from_ntfs3g(tmp_path: Path, ntfs_vol: tuple[Path, Path]) -> None:
    vol, ref = ntfs_vol
    out = tmp_path / "out"
    cli("extract", vol, "/", out)
    mnt = (ref / ".mnt").read_text()
    assert mt.compare(ref, out, lambda rel, target: mt.ntfs3g_target(mnt, rel, target)) == []
    # junctions and absolute Windows links into the volume are relative; others keep the Windows path
    assert os.readlink(out / "Docs" / "junction") == "Deep"
    assert os.readlink(out / "win-abs") == "Docs/Deep/note.txt"
    assert os.readlink(out / "junction-out") == "C:\\Windows\\Temp"
    assert os.readlink(out / "intx-rel") == "Docs/report.txt"  # the Interix link ntfs-3g wrote
    assert (out / "win-abs").read_bytes() == b"note\n"
    assert (out / "big.bin").stat().st_ino == (out / "Docs" / "big-link.bin").stat().st_ino
    listing = cli("ls", "-l", vol, "/").stdout
    assert "intx-rel -> Docs/report.txt" in listing and "\nprw-r--r--" in "\n" + listing
    assert "crw-r--r--" in listing and "1, 3" in listing


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_xfs_btrfs_extract_equals_cp_a(tmp_path: Path, kind: str) -> None:
    need_root()
    need_tools(f"mkfs.{kind}", "cp")
    vol = tmp_path / f"{kind}.raw"
    mt.linux_tree(vol, kind)
    mt.copy_from_mount(vol, kind, tmp_path / "ref")
    cli("extract", vol, "/", tmp_path / "out")
    assert mt.compare(tmp_path / "ref", tmp_path / "out") == []
    line = next(x for x in cli("ls", "-l", vol, "/").stdout.splitlines() if x.endswith(" c"))
    assert line.startswith("crw-------") and " 300, 70000 " in line


def _as_nobody(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           sys.executable, "-m", "imaging_utility", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd="/")


def test_ext4_extract_as_a_user(ext4_vol: tuple[Path, Path]) -> None:
    """Without root: owners stay the user's, set-uid bits are dropped, device nodes are skipped with a note,
    FIFOs and sockets are made, modes and times are kept; exit 0."""
    need_tools("setpriv")
    image, ref = ext4_vol
    work = Path(tempfile.mkdtemp(prefix="iu-user-"))  # pytest's own directories are root's alone
    try:
        work.chmod(0o777)
        shutil.copy(image, work / "ext4.img")
        _extract_as_user(work, ref)
    finally:
        shutil.rmtree(work)


def _extract_as_user(work: Path, ref: Path) -> None:
    proc = _as_nobody("extract", work / "ext4.img", "/", work / "out")
    assert proc.returncode == 0, proc.stderr
    out = work / "out"
    assert "not created (char): /null: device nodes are made only as root" in proc.stderr
    assert "set-uid/set-gid bits dropped" in proc.stderr
    assert not (out / "null").exists() and stat.S_ISFIFO((out / "fifo").lstat().st_mode)
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "home" / "ann" / "secret.txt").stat().st_mode) == 0o600
    assert (out / "home" / "ann" / "secret.txt").stat().st_uid == 65534
    assert (out / "home" / "ann" / "secret.txt").stat().st_mtime_ns == mt.OLD_MTIME
    assert os.listxattr(out / "home" / "ann" / "secret.txt") == []  # xattrs only as root or with --xattrs
    diffs = mt.compare(ref, out)
    assert all(": uid " in d or ": gid " in d or ": xattrs " in d or "missing: " in d or "bin/tool: mode" in d
               for d in diffs), diffs


def test_owner_options(tmp_path: Path, ext4_vol: tuple[Path, Path]) -> None:
    image, _ = ext4_vol
    out = tmp_path / "mapped"
    cli("extract", "--map-owner", "1000:1500", "--map-group", "55:66", "--map-group", "1000:1600", image, "/home",
        "/srv", out)
    secret = (out / "home" / "ann" / "secret.txt").stat()
    assert (secret.st_uid, secret.st_gid) == (1500, 1600)
    assert (out / "srv" / "shared.txt").stat().st_uid == 2000  # not mapped
    acl = subprocess.run(["getfacl", "-cnp", out / "srv" / "shared.txt"], capture_output=True, text=True).stdout
    assert "group:66:r--" in acl
    plain = tmp_path / "plain"
    cli("extract", "--no-owner", "--no-xattrs", image, "/home", plain)
    assert (plain / "home" / "ann" / "secret.txt").stat().st_uid == 0
    assert os.listxattr(plain / "home" / "ann" / "secret.txt") == []
    assert "OLD:NEW" in cli("extract", "--map-owner", "ann:bob", image, "/", plain, check=2).stderr


def test_never_writes_into_what_dest_holds(tmp_path: Path, ext4_vol: tuple[Path, Path]) -> None:
    """A hard link to an outside file, a symlink and a FIFO already in DEST: nothing is written through
    them; they are replaced (unlinked first) only with --overwrite."""
    image, _ = ext4_vol
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    dest = tmp_path / "dest"
    (dest / "home" / "ann").mkdir(parents=True)
    os.link(outside, dest / "home" / "ann" / "secret.txt")
    os.symlink(outside, dest / "home" / "ann" / "big.bin")
    proc = cli("extract", image, "/home", dest, check=3)
    assert outside.read_text() == "precious\n"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("imaging-utility: error:")]
    assert len(errors) == 2 and all("already exists in the destination" in e and "--overwrite" in e for e in errors)
    assert "2 item(s) could not be extracted (2 already existed in DEST: --overwrite replaces them)" in proc.stderr
    cli("extract", "--overwrite", image, "/home", dest)
    assert outside.read_text() == "precious\n" and outside.stat().st_nlink == 1
    assert (dest / "home" / "ann" / "secret.txt").read_bytes() == b"only ann\n"
    assert not (dest / "home" / "ann" / "big.bin").is_symlink()


def test_renames_only_where_dest_collides(tmp_path: Path) -> None:
    """Names that differ only in case stay as they are on ext4; on a case-insensitive DEST (exFAT) the
    second gets a suffix and is listed."""
    need("exfat")
    need("ext")
    src = tmp_path / "src"
    src.mkdir()
    (src / "Readme").write_text("one\n")
    (src / "README").write_text("two\n")
    vol = tmp_path / "ext.raw"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", src, vol, "8M"], check=True, capture_output=True)
    out = tmp_path / "out"
    proc = cli("extract", vol, "/", out)
    assert "renamed" not in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"Readme", "README"}
    exfat = tmp_path / "exfat.raw"
    subprocess.run(["truncate", "-s", "16M", exfat], check=True)
    subprocess.run(["mkfs.exfat", exfat], check=True, capture_output=True)
    from fsbuild import mounted

    with mounted(exfat, "exfat") as mnt:
        proc = cli("extract", "--no-owner", "--no-xattrs", vol, "/", mnt / "out")
        names = sorted(p.name for p in (mnt / "out").iterdir())
        contents = sorted((mnt / "out" / n).read_text() for n in names if n != "lost+found")
    assert "renamed: /README" in proc.stdout or "renamed: /Readme" in proc.stdout
    assert len([n for n in names if n.lower().startswith("readme")]) == 2 and contents == ["one\n", "two\n"]

