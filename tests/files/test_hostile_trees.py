"""Hostile volumes through ls, extract and WebDAV: a file whose data lies outside the volume is
reported and skipped (exit 3, a clean HTTP error), a directory claiming 8 GiB costs what it holds,
FAT names that are not text are escaped, never the cause of an unreadable directory.

Every check: one line per problem, the documented exit code, no traceback (server stderr included),
memory under a stated bound, nothing written outside DEST.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from files.filehelpers import curl, inside
from files.hostile import MiB, dav_server, hostile_ext, hostile_fat, hostile_ntfs, run_measured, vm_hwm

RSS_BOUND = 100 * MiB
"""Peak memory of an ``ls``/``extract`` process, whatever a directory claims (it was 16.8 GB)."""


def _errors(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    return lines


def _extract_all(vol: Path, tmp: Path) -> tuple[dict[str, object], list[str], Path]:
    dest = tmp / "dest"
    before = {p: p.stat().st_mtime_ns for p in tmp.rglob("*")}
    code, out, err, peak = run_measured("extract", "--json", vol, "/", dest)
    assert code == 3, (code, out, err)
    assert peak < RSS_BOUND, f"extract peaked at {peak >> 20} MiB"
    assert all(os.path.realpath(p).startswith(str(dest) + "/") for p in inside(dest))
    after = {p: p.stat().st_mtime_ns for p in tmp.rglob("*") if dest not in (p, *p.parents)}
    assert after == before  # nothing written outside DEST
    return json.loads(out), _errors(err), dest


def test_ext_extent_past_the_volume_and_a_huge_directory(tmp_path: Path) -> None:
    """Items 9 and 10 through ls and extract."""
    vol, good = hostile_ext(tmp_path)
    report, errors, dest = _extract_all(vol, tmp_path)
    failed = {f["path"]: f["error"] for f in report["failed"]}  # type: ignore[index]
    assert list(failed) == ["/f.bin"], failed
    assert "outside the volume" in failed["/f.bin"] and "inode" in failed["/f.bin"]
    assert errors == ["imaging-utility: 1 item(s) could not be extracted"], errors  # the rest is in the JSON
    proc = cli("extract", vol, "/f.bin", "/g.bin", tmp_path / "two", check=3)
    assert _errors(proc.stderr) == [f"imaging-utility: error: /f.bin: {failed['/f.bin']}",
                                    "imaging-utility: 1 item(s) could not be extracted"], proc.stderr
    for rel, data in good.items():
        assert (dest / rel).read_bytes() == data, rel
    assert not (dest / "f.bin").exists() or (dest / "f.bin").stat().st_size == 0
    code, out, err, peak = run_measured("ls", "-lR", vol, "/")
    assert code == 0 and _errors(err) == [], err
    assert peak < RSS_BOUND, f"ls -lR peaked at {peak >> 20} MiB"
    assert sum(1 for ln in out.splitlines() if "/d/n" in ln) == 20


def test_ext_attribute_block_past_the_volume(tmp_path: Path) -> None:
    """Item 9 for metadata: an inode whose extended-attribute block lies past the volume (read by our
    inode reader): its attributes are reported as not restored, its data and every other file come out."""
    need_tools("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "b.txt").write_bytes(b"beta\n")
    vol = tmp_path / "xattr-ext.raw"
    with open(vol, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-I", "256", "-d", str(tree), str(vol)], check=True,
                   capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "sif /a.txt file_acl 99999999", str(vol)], check=True,
                   capture_output=True)
    dest = tmp_path / "dest"
    proc = cli("extract", "--xattrs", vol, "/", dest, check=3)
    errors = _errors(proc.stderr)
    assert len(errors) == 2 and errors[1] == "imaging-utility: 1 item(s) could not be extracted", errors
    assert re.fullmatch(r"imaging-utility: error: /a\.txt: extended attributes not restored: ext4 inode \d+: its "
                        r"attribute block at block 99999999 \(\+1\) lies outside the volume's 32768 blocks",
                        errors[0]), errors
    assert (dest / "a.txt").read_bytes() == b"alpha\n" and (dest / "b.txt").read_bytes() == b"beta\n"


def test_ntfs_negative_lcn(tmp_path: Path) -> None:
    """Item 9: an NTFS data run with a negative LCN: that file fails, the rest is extracted."""
    vol, good = hostile_ntfs(tmp_path)
    report, errors, dest = _extract_all(vol, tmp_path)
    failed = {f["path"]: f["error"] for f in report["failed"]}  # type: ignore[index]
    assert list(failed) == ["/neg.bin"] and "outside the volume" in failed["/neg.bin"], failed
    assert len(errors) == 1, errors
    for name, data in good.items():
        assert (dest / name).read_bytes() == data
    with dav_server(tmp_path, vol) as dav:
        r = curl("-i", f"{dav.url}neg.bin")
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500") and body.count(b"\n") == 1 and b"neg.bin" in body, r.stdout[:300]
        assert curl(f"{dav.url}good.bin").stdout == good["good.bin"]


def test_webdav_on_a_hostile_ext_volume(tmp_path: Path) -> None:
    """Items 9 and 10 over WebDAV: a clean 500 (one line, before any byte) for the broken file, every
    other path served, the 8 GiB directory listed in bounded memory."""
    need_tools("curl")
    vol, good = hostile_ext(tmp_path)
    with dav_server(tmp_path, vol) as dav:
        for method in ("GET", "HEAD"):
            r = curl("-i", "-X", method, f"{dav.url}f.bin")
            assert r.stdout.startswith(b"HTTP/1.1 500"), r.stdout[:200]
        body = curl(f"{dav.url}f.bin").stdout
        assert body.count(b"\n") == 1 and b"/f.bin" in body and b"outside the volume" in body, body
        for rel, data in good.items():
            assert curl(f"{dav.url}{rel}").stdout == data, rel
        for _ in range(3):
            r = curl("-X", "PROPFIND", "-H", "Depth: 1", f"{dav.url}d/")
            assert r.stdout.count(b"<D:response>") == 21, r.stdout[-300:]
            assert b"</D:multistatus>" in r.stdout
        assert vm_hwm(dav.proc.pid) < RSS_BOUND
    assert dav.stderr().count("\n") <= 8, dav.stderr()  # one line per failed request


def test_fat_dotdot_and_unpaired_surrogate(tmp_path: Path) -> None:
    """Item 12: a root entry named ``..`` is listed escaped; a long name holding an unpaired surrogate
    is escaped (``%uD800``) and the rest of the root still lists; every WebDAV path answers."""
    vol, files = hostile_fat(tmp_path)
    proc = cli("ls", vol, "/")
    assert _errors(proc.stderr) == []
    names = proc.stdout.splitlines()
    assert sorted(names) == sorted(["%2E%2E", "%uD800ongname-with-surrogate.txt", "plain.txt", "big.bin"]), names
    dest = tmp_path / "dest"
    cli("extract", vol, "/", dest)
    assert (dest / "%2E%2E").read_bytes() == files["DOTDOT"]
    assert (dest / "%uD800ongname-with-surrogate.txt").read_bytes() == files["longname-with-surrogate.txt"]
    assert (dest / "plain.txt").read_bytes() == files["plain.txt"]
    with dav_server(tmp_path, vol) as dav:
        listing = curl("-X", "PROPFIND", "-H", "Depth: 1", dav.url).stdout.decode()
        hrefs = re.findall(r"<D:href>([^<]+)</D:href>", listing)
        assert len(hrefs) == 5, listing
        got = {}
        for href in hrefs[1:]:
            r = curl("-i", f"{dav.url.rstrip('/')}{href}")
            assert r.stdout.startswith(b"HTTP/1.1 200"), (href, r.stdout[:200])
            got[href] = r.stdout.partition(b"\r\n\r\n")[2]
        assert got["/%252E%252E"] == files["DOTDOT"]  # the file whose escaped name is %2E%2E
        assert got["/plain.txt"] == files["plain.txt"]
        need_tools("rclone")
        out = tmp_path / "rclone"
        subprocess.run(["rclone", "copy", "--webdav-url", dav.url, ":webdav:", str(out)], check=True,
                       capture_output=True, timeout=120, env={**os.environ, "RCLONE_CONFIG": "/dev/null"})
        assert (out / "big.bin").read_bytes() == files["big.bin"]


@pytest.fixture(scope="module")
def range_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    tmp = tmp_path_factory.mktemp("ranges")
    vol, files = hostile_fat(tmp)
    with dav_server(tmp, vol) as dav:
        yield dav, files["big.bin"]


@pytest.mark.parametrize(("header", "want"), [
    ("bytes=5-2", 416), ("bytes=-0", 416), ("bytes=300000-", 416), ("bytes=x-y", 416), ("bytes=", 416),
    ("bytes=0-9", 206), ("bytes=299990-", 206), ("bytes=-10", 206), ("bytes=299995-400000", 206),
    ("items=0-9", 200), (",".join(f"{i}-{i}" for i in range(0, 200, 2)).join(("bytes=", "")), 200),
])
def test_webdav_ranges(range_server: object, header: str, want: int) -> None:
    """Item 15: RFC 9110 ranges; malformed or unsatisfiable ones 416 with ``Content-Range: bytes */N``."""
    dav, data = range_server  # type: ignore[misc]
    r = curl("-i", "-H", f"Range: {header}", f"{dav.url}big.bin")
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {want}".encode()), head
    if want == 416:
        assert b"\r\nContent-Range: bytes */300000" in head
    elif want == 200:
        assert body == data
    else:
        m = re.search(rb"Content-Range: bytes (\d+)-(\d+)/300000", head)
        assert m, head
        a, b = int(m.group(1)), int(m.group(2))
        assert body == data[a : b + 1]
        expect = {"bytes=0-9": (0, 9), "bytes=299990-": (299990, 299999), "bytes=-10": (299990, 299999),
                  "bytes=299995-400000": (299995, 299999)}[header]
        assert (a, b) == expect


def test_webdav_multirange(range_server: object) -> None:
    dav, data = range_server  # type: ignore[misc]
    r = curl("-i", "-H", "Range: bytes=0-9,100-199,-5", f"{dav.url}big.bin")
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    m = re.search(rb"Content-Type: multipart/byteranges; boundary=(\w+)", head)
    assert m, head
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert length == len(body)
    parts = body.split(b"--" + m.group(1))
    assert parts[-1] == b"--\r\n"
    got = []
    for part in parts[1:-1]:
        phead, _, pdata = part.partition(b"\r\n\r\n")
        a, b = map(int, re.search(rb"bytes (\d+)-(\d+)/300000", phead).groups())  # type: ignore[union-attr]
        assert pdata[:-2] == data[a : b + 1] and pdata.endswith(b"\r\n")
        got.append((a, b))
    assert got == [(0, 9), (100, 199), (299995, 299999)]


def test_webdav_depth_infinity_is_refused(range_server: object) -> None:
    """Item 11: RFC 4918 §9.1: 403 with the propfind-finite-depth precondition (a missing Depth header
    means infinity)."""
    dav, _data = range_server  # type: ignore[misc]
    for extra in (["-H", "Depth: infinity"], []):
        r = curl("-i", "-X", "PROPFIND", *extra, dav.url)
        assert r.stdout.startswith(b"HTTP/1.1 403"), r.stdout[:200]
        assert b"<D:propfind-finite-depth/>" in r.stdout
    r = curl("-i", "-X", "PROPFIND", "-H", "Depth: 0", "--data-binary",
             '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/><X:y xmlns:X="urn:x"/>'
             "</D:prop></D:propfind>", f"{dav.url}big.bin")
    assert r.stdout.startswith(b"HTTP/1.1 207")
    assert b"<D:getcontentlength>300000</D:getcontentlength>" in r.stdout and b"404 Not Found" in r.stdout
    r = curl("-i", "-X", "PROPFIND", "-H", "Depth: 0", "--data-binary", "<not xml", dav.url)
    assert r.stdout.startswith(b"HTTP/1.1 400")


def test_webdav_survives_raw_misbehaviour(range_server: object) -> None:
    """Garbage request lines, absurd headers, a client that vanishes mid-body: one log line at most
    each, no traceback, the server still answers."""
    import socket

    dav, data = range_server  # type: ignore[misc]
    host, port = dav.url.split("//")[1].rstrip("/").split(":")
    for raw in (b"\x00\x01garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"0-0," * 20000 + b"\r\n\r\n",
                b"PROPFIND / HTTP/1.1\r\nHost: x\r\nDepth: 1\r\nContent-Length: 999999999\r\n\r\n<D:",
                b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(raw)
            s.recv(100)  # then vanish with the rest of the answer unread
    assert curl(f"{dav.url}big.bin").stdout == data
    assert "Traceback" not in dav.stderr()


def test_ext4_fscrypt_directory_is_named_not_extracted_as_ciphertext(tmp_path: Path) -> None:
    """An fscrypt-encrypted directory (``e4crypt``): its names and its files' data are ciphertext and the
    key is not in the image.  It was extracted as if it were the data (garbage names, exit 0); now it is
    one error naming it, exit 3, and everything else is extracted."""
    need_root()
    need_tools("mkfs.ext4", "e4crypt")
    vol = tmp_path / "enc.raw"
    with open(vol, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-O", "encrypt", vol], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", vol, mnt], check=True)
    try:
        (mnt / "secret").mkdir()
        subprocess.run(["sh", "-c", f"echo pass | e4crypt add_key -S 0x1234567812345678 {mnt / 'secret'} && "
                        f"echo 'top secret' > {mnt / 'secret' / 'file.txt'}"], check=True, capture_output=True)
        (mnt / "plain.txt").write_bytes(b"plain\n")
    finally:
        subprocess.run(["umount", mnt], check=True)
    proc = cli("extract", vol, "/", tmp_path / "out", check=3)
    assert _errors(proc.stderr) == [
        "imaging-utility: error: /secret: ext4 inode 12 is encrypted (fscrypt): its names and data cannot be "
        "read without its key, which no image holds", "imaging-utility: 1 item(s) could not be extracted"]
    assert (tmp_path / "out" / "plain.txt").read_bytes() == b"plain\n"
    assert not (tmp_path / "out" / "secret").exists()


def test_ntfs_efs_file_is_named_not_extracted_as_ciphertext(tmp_path: Path) -> None:
    """A file whose $DATA is EFS-encrypted (its attribute flagged ENCRYPTED, as Windows writes it; made
    here by setting the flag on a file ntfs-3g wrote): its clusters hold ciphertext and the key is not in
    the image, so it is one error naming it, exit 3; the rest is extracted."""
    from files.hostile import _rewrite_record
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems import ntfs
    from imaging_utility.filesystems.tree import open_tree

    need_tools("mkntfs", "ntfs-3g")
    need_root()
    vol = tmp_path / "efs.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mkntfs", "-F", "-Q", vol)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        (mnt / "efs.bin").write_bytes(os.urandom(100_000))
        (mnt / "plain.txt").write_bytes(b"plain\n")
    with FileSource(str(vol)) as src:
        number = open_tree(src).stat("/efs.bin").inode
        boot = ntfs.probe(src)
        assert boot is not None and number is not None
        offset = ntfs._record_offset(src, boot, number)

    def encrypted(rec: bytearray) -> None:
        pos = int.from_bytes(rec[0x14:0x16], "little")
        while int.from_bytes(rec[pos : pos + 4], "little") != 0x80:
            pos += int.from_bytes(rec[pos + 4 : pos + 8], "little")
        flags = int.from_bytes(rec[pos + 0x0C : pos + 0x0E], "little")
        rec[pos + 0x0C : pos + 0x0E] = (flags | 0x4000).to_bytes(2, "little")

    _rewrite_record(vol, offset, boot.record_size, encrypted)
    proc = cli("extract", vol, "/", tmp_path / "out", check=3)
    assert f"/efs.bin: ntfs MFT record {number} is encrypted (EFS)" in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "plain.txt").read_bytes() == b"plain\n"
    assert not (tmp_path / "out" / "efs.bin").exists()
