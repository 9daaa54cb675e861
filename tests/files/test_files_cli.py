"""ls / extract / webdav end to end on real NTFS, ext4 and FAT32 volumes, through the real CLI and real clients."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_tools
from files.filehelpers import MiB, build, curl, need, sha256, status, webdav

KINDS = ["ntfs", "ext4", "fat32", "exfat"]
FAMILY = {"ntfs": "ntfs", "ext4": "ext", "fat32": "fat", "exfat": "exfat"}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict[str, str]]]:
    files = tmp_path_factory.mktemp("tree")
    fsbuild.make_tree(files, large_mib=2)
    made: dict[str, tuple[Path, dict[str, str]]] = {}

    def get(kind: str) -> tuple[Path, dict[str, str]]:
        need(FAMILY[kind])
        if kind not in made:
            vol = tmp_path_factory.mktemp(kind) / f"{kind}.raw"
            made[kind] = (vol, build(kind, vol, files))
        return made[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_extract_everything_is_identical(tmp_path: Path, volumes: Callable[[str], tuple[Path, dict[str, str]]],
                                         kind: str) -> None:
    vol, expected = volumes(kind)
    dest = tmp_path / "out"
    out = cli("extract", "--streams", vol, "/", dest).stdout
    assert "extracted" in out
    assert fsbuild.hash_dir(dest) == expected
    # mtimes are kept; the sparse file stays sparse (only mke2fs -d keeps the source's holes)
    listing = {e["path"]: e for e in json.loads(cli("ls", "--json", vol, "/").stdout)}
    st = (dest / "hello.txt").stat()
    mtime = listing["/hello.txt"]["mtime"]
    assert abs(st.st_mtime - datetime.fromisoformat(mtime).timestamp()) < 1
    if kind == "ext4":
        assert (dest / "sparse.img").stat().st_blocks * 512 < 1 * MiB


@pytest.mark.parametrize("kind", ["ntfs", "ext4"])
def test_hard_links_and_streams_are_listed(volumes: Callable[[str], tuple[Path, dict[str, str]]], kind: str) -> None:
    vol, _ = volumes(kind)
    if kind == "ext4":
        a, b = (json.loads(cli("ls", "--json", vol, p).stdout)[0] for p in ("/hello.txt", "/hardlink.txt"))
    else:
        a = json.loads(cli("ls", "--json", vol, "/large.bin").stdout)[0]
        b = json.loads(cli("ls", "--json", vol, "/level0/large-link.bin").stdout)[0]
        hello = json.loads(cli("ls", "--json", vol, "/HELLO.TXT").stdout)[0]  # case-insensitive like Windows
        assert hello["streams"] == ["secret"]
    assert a["inode"] == b["inode"] and a["nlink"] == b["nlink"] == 2


def test_extract_from_image_kinds(tmp_path: Path, volumes: Callable[[str], tuple[Path, dict[str, str]]]) -> None:
    """The same files from a full image, a used-only image and a split image of the ext4 volume."""
    vol, expected = volumes("ext4")
    images = {
        "full": tmp_path / "full.img",
        "used": tmp_path / "used.img",
        "split": tmp_path / "split.img",
    }
    cli("image", "--chunk-size", "256K", vol, images["full"])
    cli("image", "--used-only", "--chunk-size", "256K", vol, images["used"])
    cli("image", "--split-size", "4M", "--chunk-size", "256K", vol, images["split"])
    assert Path(f"{images['split']}.002").exists()
    for name, img in images.items():
        dest = tmp_path / f"out-{name}"
        target = f"{img}.001" if name == "split" else img
        cli("extract", target, "/", dest)
        assert fsbuild.hash_dir(dest) == expected, name
    # a subtree and a single file land under their own names
    dest = tmp_path / "some"
    cli("extract", images["used"], "/many", "/hello.txt", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["hello.txt", "many"]
    assert len(list((dest / "many").iterdir())) == 60


def test_partition_of_a_whole_disk(tmp_path: Path, volumes: Callable[[str], tuple[Path, dict[str, str]]]) -> None:
    need_tools("sfdisk")
    vol, expected = volumes("fat32")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(MiB + vol.stat().st_size)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, type=c\n", check=True)
    with open(disk, "r+b") as f, open(vol, "rb") as v:
        f.seek(MiB)
        while block := v.read(MiB):
            f.write(block)
    err = cli("ls", disk, check=2).stderr
    assert "--partition" in err and "partitions: 1" in err
    dest = tmp_path / "out"
    cli("extract", "--partition", "1", disk, "/", dest)
    assert fsbuild.hash_dir(dest) == expected
    assert "hello.txt" in cli("ls", "--offset", "1M", disk).stdout.split()


def test_ls_formats(volumes: Callable[[str], tuple[Path, dict[str, str]]]) -> None:
    vol, expected = volumes("ext4")
    plain = cli("ls", vol).stdout.splitlines()
    assert {"hello.txt", "large.bin", "many/", "ünïcødé-каталог/"} <= set(plain)
    long = {line.split()[-1]: line for line in cli("ls", "-l", vol, "/").stdout.splitlines()}
    assert long["large.bin"].startswith("-") and f"{2 * MiB + 4097:,}" in long["large.bin"]
    assert long["many/"].startswith("d")
    rec = cli("ls", "-R", vol, "/level0").stdout.splitlines()
    assert "/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/bottom.txt" in rec
    entries = json.loads(cli("ls", "-R", "--json", vol, "/").stdout)
    files = {e["path"][1:] for e in entries if e["type"] == "file"}
    assert files == set(expected)
    one = json.loads(cli("ls", "--json", vol, "/one.bin").stdout)
    assert one[0]["size"] == 1 and one[0]["type"] == "file" and one[0]["mode"] == 0o644
    assert "no such file" in cli("ls", vol, "/nope", check=4).stderr


@pytest.mark.parametrize("kind", ["ntfs", "ext4"])
def test_webdav_rclone_curl_and_writes(tmp_path: Path, volumes: Callable[[str], tuple[Path, dict[str, str]]],
                                       kind: str) -> None:
    need_tools("rclone", "curl")
    vol, expected = volumes(kind)
    with webdav(vol) as url:
        remote = "image:"
        env = {**os.environ, "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_IMAGE_TYPE": "webdav",
               "RCLONE_CONFIG_IMAGE_URL": url}
        listed = json.loads(subprocess.run(["rclone", "lsjson", "-R", "--files-only", remote], env=env,
                                           capture_output=True, check=True, timeout=120).stdout)
        want = {k for k in expected if ":" not in k}
        assert {e["Path"] for e in listed} == want
        subprocess.run(["rclone", "copy", remote, str(tmp_path / "copy")], env=env, check=True,
                       capture_output=True, timeout=120)
        assert fsbuild.hash_dir(tmp_path / "copy") == {k: v for k, v in expected.items() if k in want}
        large = (tmp_path / "copy" / "large.bin").read_bytes()
        got = curl("-r", "1000-1999", f"{url}large.bin")
        assert got.stdout == large[1000:2000]
        assert curl("-r", "-77", f"{url}large.bin").stdout == large[-77:]
        head = curl("-I", f"{url}large.bin").stdout.decode()
        assert "200" in head.splitlines()[0] and f"Content-Length: {len(large)}" in head
        assert sha256(curl(f"{url}large.bin").stdout) == expected["large.bin"]
        for method in ("PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK", "POST"):
            assert status("-X", method, "-H", f"Destination: {url}x", "--data", "x", f"{url}hello.txt") == 403, method
        assert status("-X", "PUT", "--data", "x", f"{url}new.txt") == 403
        assert status(f"{url}new.txt") == 404
        assert status(f"{url}..%2F..%2F..%2Fetc%2Fpasswd") == 404
        propfind = curl("-X", "PROPFIND", "-H", "Depth: 1", url)
        assert b"multistatus" in propfind.stdout and b"large.bin" in propfind.stdout


def test_webdav_basic_auth(tmp_path: Path, volumes: Callable[[str], tuple[Path, dict[str, str]]]) -> None:
    vol, _ = volumes("ext4")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    with webdav(vol, "--user", "ann", "--password-file", pw) as url:
        assert status(f"{url}hello.txt") == 401
        assert status("-u", "ann:wrong", f"{url}hello.txt") == 401
        assert curl("-u", "ann:s3cret", f"{url}hello.txt").stdout == b"hello, world\n"
    assert "go together" in cli("webdav", vol, "--user", "ann", check=2).stderr


def test_webdav_html_listing_in_headless_chromium(tmp_path: Path,
                                                   volumes: Callable[[str], tuple[Path, dict[str, str]]]) -> None:
    need_tools("chromium", "curl")
    vol, _ = volumes("fat32")
    shot = tmp_path / "listing.png"
    with webdav(vol) as url:
        page = curl(url).stdout.decode()
        assert "<table>" in page and "large.bin" in page and f"{2 * MiB + 4097:,}" in page
        assert 'href="/%C3%BCn%C3%AFc%C3%B8d%C3%A9-%D0%BA%D0%B0%D1%82%D0%B0%D0%BB%D0%BE%D0%B3/"' in page
        sub = curl(f"{url}many/").stdout.decode()
        assert "file-059.dat" in sub and 'href="/"' in sub
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
                            "--window-size=1200,800", url], capture_output=True, timeout=120, check=False)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
