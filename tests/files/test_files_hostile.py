"""Hostile and damaged filesystems: names edited in real images at test time, bad sectors mapped onto files."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import fsbuild
from conftest import cli, need_tools
from devices.devhelpers import eio_fuse
from files.filehelpers import MiB, curl, inside, need, status, webdav
from files.hostile import EXT_HOSTILE, hostile_ext_names
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree


def test_hostile_ext_names_never_escape(tmp_path: Path) -> None:
    vol = hostile_ext_names(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "d1")  # a symlink already in DEST must not redirect writes
    proc = cli("extract", "--json", vol, "/", dest, check=3)
    report = json.loads(proc.stdout)
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/escape").exists()
    for p in inside(dest):
        assert os.path.realpath(p).startswith(str(dest) + "/") or p.is_symlink()
        assert len(os.fsencode(p.name)) <= 255 and "\x01" not in p.name
    assert any(f["path"] == "/d1" and "symlink" in f["error"] for f in report["failed"])
    # links are made as stored and never followed: they may point anywhere, nothing was written through them
    assert os.readlink(dest / "abs-link") == "/etc/passwd"
    assert os.readlink(dest / "rel-link") == "../../../../etc/shadow"
    assert report["symlinks"] == 2
    written = {os.fsdecode(p.name) for p in dest.iterdir()}
    assert "%" + "2F" + "abs" in written and "€" * 85 in written
    assert "..%2F..%2F..%2F..%2Ftmp%2Fescape" in written
    # the raw names are reported and every payload was written somewhere inside DEST
    payloads = sorted(p.read_bytes() for p in dest.iterdir() if p.is_file() and not p.is_symlink())
    assert len(payloads) == len(EXT_HOSTILE)  # including the file renamed '..', written as '%2E%2E'
    assert "%2E%2E" in written
    # without the symlink in the way: the loop is cut and reported, the rest extracts
    dest2 = tmp_path / "dest2"
    report2 = json.loads(cli("extract", "--json", vol, "/d1", dest2, check=3).stdout)
    assert (dest2 / "d1" / "ok.txt").read_text() == "fine\n"
    assert any("loops back" in f["error"] for f in report2["failed"])
    listing = cli("ls", "-R", vol, "/", check=3)
    assert "\\x01\\x1b[31mred\\x7f" in listing.stdout and "\x1b" not in listing.stdout
    assert "loops back" in listing.stderr


def test_hostile_ext_over_webdav(tmp_path: Path) -> None:
    vol = hostile_ext_names(tmp_path)
    with webdav(vol) as url:
        page = curl(url).stdout.decode("utf-8", "replace")
        assert "\x01" not in page and "\x1b" not in page and "<a href=\"/%25" in page
        # the file named '../../../../tmp/escape' in the image is served as itself, from inside the tree
        assert curl(f"{url}..%252F..%252F..%252F..%252Ftmp%252Fescape").stdout == b"payload 1\n"
        assert status(f"{url}..%2F..%2F..%2F..%2Fetc%2Fpasswd") == 404
        # a path climbing above the root is refused at once, with the body its Content-Length promises
        # (wsgidav's own refusal sent no body: the client waited for it until its timeout, 30 s here)
        r = curl("--max-time", "5", "-w", "%{http_code}", f"{url}../../../../etc/passwd", "--path-as-is")
        assert r.returncode == 0 and r.stdout.endswith(b"climbs above the share's root\n400"), r
        # a path that is not UTF-8 once unquoted: a 400 too (no answer at all before, the connection closed)
        r = curl("--max-time", "5", "-w", "%{http_code}", f"{url}d1/%ff%fe")
        assert r.returncode == 0 and r.stdout.endswith(b"is not UTF-8\n400"), r
        assert status(f"{url}%252Fabs") == 200
        assert status(f"{url}abs-link") == 404  # symlinks are not served, never followed
        assert status("-X", "PROPFIND", "-H", "Depth: 1", f"{url}d1/") == 207
        assert status(f"{url}d1/ok.txt") == 200


def test_hostile_fat_short_names(tmp_path: Path) -> None:
    need("fat")
    vol = tmp_path / "fat.raw"
    fsbuild.random_image(vol, 40)
    fsbuild._run("mkfs.vfat", "-F", "32", "-s", "1", vol)
    with tempfile.TemporaryDirectory() as t:
        for n in ("AAAA1", "AAAA2", "AAAA3"):
            Path(t, n).write_text(f"{n}\n")
            fsbuild._run("mcopy", "-i", vol, Path(t, n), f"::/{n}")
    fsbuild._run("mmd", "-i", vol, "::/LOOPA")
    fsbuild._run("mmd", "-i", vol, "::/LOOPA/LOOPB")
    data = bytearray(vol.read_bytes())
    for old, new in ((b"AAAA1      ", b"..         "), (b"AAAA2      ", b"A/B\x01    TXT"),
                     (b"AAAA3      ", b"\x05X\x7f     EXE")):
        pos = data.find(old)
        data[pos : pos + 11] = new
    a = data.find(b"LOOPA      ")
    b = data.find(b"LOOPB      ")
    data[b + 20 : b + 22] = data[a + 20 : a + 22]  # LOOPB's first cluster := LOOPA's
    data[b + 26 : b + 28] = data[a + 26 : a + 28]
    vol.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    report = json.loads(cli("extract", "--json", vol, "/", dest, check=3).stdout)
    names = sorted(os.fsdecode(p.name) for p in dest.iterdir())
    assert "LOOPA" in names and all("/" not in n and "\x01" not in n for n in names)
    assert any("loops back" in f["error"] for f in report["failed"])
    assert all(os.path.realpath(p).startswith(str(dest) + "/") for p in inside(dest))
    # the root has no "." or "..": an entry named ".." there is a real name, listed escaped, never dropped
    assert {p.read_text() for p in dest.iterdir() if p.is_file()} == {"AAAA1\n", "AAAA2\n", "AAAA3\n"}
    assert (dest / "%2E%2E").read_text() == "AAAA1\n"


def _ext_with_large_file(tmp: Path) -> tuple[Path, str]:
    src = tmp / "src"
    src.mkdir(parents=True)
    (src / "large.bin").write_bytes(os.urandom(3 * MiB))
    (src / "small.txt").write_text("small\n")
    vol = tmp / "vol.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", src, vol)
    return vol, "/large.bin"


def test_bad_sectors_name_the_damaged_file(tmp_path: Path) -> None:
    need("ext")
    need_tools("fusermount3")
    vol, path = _ext_with_large_file(tmp_path)
    with FileSource(str(vol)) as src:
        runs = open_tree(src).data_runs(path)
    foff, disk, _ = runs[0]
    bad = {(disk + 64 * 1024) // 512, (disk + 64 * 1024) // 512 + 1}
    img = tmp_path / "rescued.img"
    with eio_fuse(vol, tmp_path / "mnt", bad) as failing:
        cli("image", "--rescue", "--retries", "1", "--chunk-size", "256K", failing, img, check=3)
    found = json.loads(cli("ls", "--damaged", "--json", img).stdout)
    assert found == [{"path": path, "cause": "unreadable", "lost": [{"offset": foff + 64 * 1024, "length": 1024}],
                      "lost_bytes": 1024}]
    human = cli("ls", "--damaged", img).stdout
    assert human.startswith(f"{path}\t1024 bytes lost at file offsets {foff + 64 * 1024}+1024")
    assert "no file data" in cli("ls", "--damaged", vol).stderr


def test_damaged_ntfs_record_and_ext_directory(tmp_path: Path) -> None:
    need("ntfs")
    vol = tmp_path / "ntfs.raw"
    files = tmp_path / "files"
    (files / "keep").mkdir(parents=True)
    (files / "victim.txt").write_text("x")
    (files / "keep" / "a.txt").write_text("a")
    fsbuild.make_ntfs(vol, 16, files)
    with FileSource(str(vol)) as src:
        record = open_tree(src).stat("/victim.txt").inode
    boot = vol.read_bytes()[:512]
    cluster = int.from_bytes(boot[11:13], "little") * boot[13]
    mft = int.from_bytes(boot[0x30:0x38], "little") * cluster
    with open(vol, "r+b") as f:
        f.seek(mft + record * 1024)
        f.write(bytes(1024))
    proc = cli("ls", vol, "/", check=3)
    assert "keep/" in proc.stdout.split() and "hello.txt" in proc.stdout.split()
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and f"MFT record {record}" in errors[0] and "victim.txt" in errors[0]
    one = cli("ls", vol, "/victim.txt", check=8).stderr.strip().splitlines()
    assert len(one) == 1 and f"MFT record {record}" in one[0] and "Traceback" not in one[0]
    assert cli("extract", vol, "/keep", tmp_path / "out").returncode == 0
    # ext: zero the block of one directory
    need("ext")
    evol, _ = _ext_with_large_file(tmp_path / "e")
    fsbuild._run("debugfs", "-w", "-R", "mkdir /broken", evol)
    block = int(fsbuild._run("debugfs", "-R", "blocks /broken", evol).split()[0])
    with open(evol, "r+b") as f:
        f.seek(block * 1024 if evol.stat().st_size < 32 * MiB and _bs(evol) == 1024 else block * 4096)
        f.write(bytes(_bs(evol)))
    rec = cli("ls", "-R", evol, "/", check=3)
    assert "/large.bin" in rec.stdout and "/small.txt" in rec.stdout
    assert rec.stderr.count("error") == 1 and "directory /broken" in rec.stderr
    bad = cli("ls", evol, "/broken", check=8).stderr.strip().splitlines()
    assert len(bad) == 1 and "/broken" in bad[0]


def _bs(vol: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(vol)], capture_output=True, text=True).stdout
    return int(out.split("Block size:")[1].split()[0])
