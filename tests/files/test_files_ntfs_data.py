"""NTFS data held in unusual ways: reparse points that keep the file's data in place (OneDrive and other cloud
files; what is on the volume is extracted, what is only in the cloud is named, never made up), the valid data
length of files read through dissect, and files compressed by NTFS itself (LZNT1)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import fsbuild
from conftest import cli
from files.filehelpers import need
from imagetools import damage_chunk
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree

MiB = 1 << 20
ONEDRIVE = 0x9000601A  # IO_REPARSE_TAG_CLOUD_6, what OneDrive sets


def _cloud_reparse(tag: int = ONEDRIVE) -> bytes:
    body = b"\x01\x00\x00\x00" + bytes(60)  # an opaque provider blob, as the Cloud Files API stores it
    return struct.pack("<IHH", tag, len(body), 0) + body


def _file(mnt: Path, name: str, data: bytes, sparse_to: int | None = None, tag: int = ONEDRIVE) -> None:
    path = mnt / name
    path.write_bytes(data)
    if sparse_to is not None:
        os.truncate(path, sparse_to)  # ntfs-3g leaves the extension a sparse hole: not downloaded
    os.setxattr(path, "system.ntfs_reparse_data", _cloud_reparse(tag))


def test_cloud_files_on_the_volume_are_extracted_and_placeholders_named(tmp_path: Path) -> None:
    need("ntfs")
    vol = tmp_path / "cloud.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "cloud", vol)
    hydrated = os.urandom(3 * MiB + 17)
    small = b"resident cloud file\n"
    with fsbuild.mounted(vol, "ntfs") as mnt:
        (mnt / "OneDrive").mkdir()
        _file(mnt, "OneDrive/report.docx", hydrated)  # downloaded: all its data is here
        _file(mnt, "OneDrive/small.txt", small)  # resident in its MFT record
        _file(mnt, "OneDrive/empty.txt", b"")
        _file(mnt, "OneDrive/projfs.bin", b"P" * 50_000, tag=0x9000001C)  # projected file system, hydrated
        _file(mnt, "OneDrive/online-only.pdf", b"", sparse_to=2 * MiB)  # a placeholder: nothing here
        _file(mnt, "OneDrive/partial.iso", os.urandom(MiB), sparse_to=4 * MiB)  # first MiB downloaded
        _file(mnt, "OneDrive/dedup.bin", b"D" * 50_000, tag=0x80000013)  # data in a chunk store, not read
    listing = {e["path"]: e for e in json.loads(cli("ls", "-R", "--json", vol, "/").stdout)}
    for name, size in (("report.docx", len(hydrated)), ("small.txt", len(small)), ("empty.txt", 0),
                       ("projfs.bin", 50_000)):
        assert (listing[f"/OneDrive/{name}"]["type"], listing[f"/OneDrive/{name}"]["size"]) == ("file", size), name
    for name in ("online-only.pdf", "partial.iso", "dedup.bin"):
        assert listing[f"/OneDrive/{name}"]["type"] == "reparse", name

    out = tmp_path / "out"
    proc = cli("extract", vol, "/", out)
    assert (out / "OneDrive" / "report.docx").read_bytes() == hydrated
    assert (out / "OneDrive" / "small.txt").read_bytes() == small
    assert (out / "OneDrive" / "empty.txt").read_bytes() == b""
    assert (out / "OneDrive" / "projfs.bin").read_bytes() == b"P" * 50_000
    for name in ("online-only.pdf", "partial.iso", "dedup.bin"):
        assert not (out / "OneDrive" / name).exists(), name
    assert ("online-only.pdf -> reparse tag 0x9000601a: a cloud file (OneDrive or another sync client): 0 of its "
            "2097152 bytes are on this volume, the rest only in the cloud") in proc.stderr
    assert f"partial.iso -> reparse tag 0x9000601a: a cloud file (OneDrive or another sync client): {MiB} of its " \
        f"{4 * MiB} bytes are on this volume" in proc.stderr
    assert "dedup.bin -> reparse tag 0x80000013: not a file" in proc.stderr


def _patch_valid_length(vol: Path, size: int, valid: int) -> int:
    """Set the valid data length of the non-resident $DATA attribute whose size is ``size`` (unique on the
    volume) to ``valid``, in place; the number of attribute headers patched."""
    raw = bytearray(vol.read_bytes())
    patched = 0
    needle = struct.pack("<qq", size, size)  # FileSize, ValidDataLength at 0x30 and 0x38 of the header
    at = raw.find(needle)
    while at >= 0:
        head = at - 0x30
        if head >= 0 and raw[head : head + 4] == b"\x80\x00\x00\x00" and raw[head + 8] == 1:
            raw[at + 8 : at + 16] = struct.pack("<q", valid)
            patched += 1
        at = raw.find(needle, at + 1)
    vol.write_bytes(raw)
    return patched


def test_bytes_past_the_valid_data_length_read_as_zeros_through_dissect(tmp_path: Path) -> None:
    """A file Windows extended without writing (SetEndOfFile): its clusters past the valid data length hold
    whatever was on the disk, and read as zeros.  A record with an attribute list is read through dissect,
    which ignores that length: the stale bytes came out as the file's data."""
    need("ntfs")
    vol = tmp_path / "vdl.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "vdl", vol)
    size = 2 * MiB + 12345
    with fsbuild.mounted(vol, "ntfs") as mnt:
        for name in ("plain.bin", "listed.bin"):
            (mnt / name).write_bytes(b"B" * size)  # all allocated: the stale data past the valid length
        for i in range(60):  # enough named streams that the record needs an attribute list
            (mnt / f"listed.bin:stream-{i:02d}-{'x' * 80}").write_bytes(b"s")
    assert _patch_valid_length(vol, size, 70_000) == 2
    with FileSource(str(vol)) as source:
        tree = open_tree(source)
        assert type(tree._node("/listed.bin")).__name__ == "MftRecord"  # dissect's path, not the fast one
        for name in ("/plain.bin", "/listed.bin"):
            data = tree.open(name).read()
            assert data[:70_000] == b"B" * 70_000 and data[70_000:] == bytes(size - 70_000), name
    cli("extract", vol, "/listed.bin", tmp_path / "out")
    assert (tmp_path / "out" / "listed.bin").read_bytes() == b"B" * 70_000 + bytes(size - 70_000)


def test_ntfs_compressed_files_are_read_as_ntfs_3g_wrote_them(tmp_path: Path) -> None:
    """Files in a directory marked compressed (LZNT1, 16-cluster units), written by ntfs-3g: text, zeros,
    incompressible data, a mix, a resident file, one sparse and one extended past its valid data length."""
    need("ntfs")
    vol = tmp_path / "lznt1.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "lznt1", vol)
    text = (Path(__file__).resolve().parents[2] / "README.md").read_bytes()
    files = {"text.txt": text * 3, "zeros.bin": bytes(300_000), "random.bin": os.urandom(200_000),
             "mixed.bin": text[:40_000] + os.urandom(70_000) + bytes(100_000) + text[:40_000],
             "small.txt": b"tiny compressed\n" * 3}
    mnt = tmp_path / "mnt"  # ntfs-3g compresses new files in a directory marked compressed
    mnt.mkdir()
    fsbuild._run("ntfs-3g", "-o", "rw,compression", vol, mnt)
    try:
        (mnt / "comp").mkdir()
        fsbuild._run("setfattr", "-n", "system.ntfs_attrib_be", "-v", "0x00000810", mnt / "comp")
        for name, data in files.items():
            (mnt / "comp" / name).write_bytes(data)
        with open(mnt / "comp" / "sparse.bin", "wb") as f:
            f.write(text[:5000])
            f.seek(3 * MiB)
            f.write(text[:5000])
        files["sparse.bin"] = text[:5000] + bytes(3 * MiB - 5000) + text[:5000]
        with open(mnt / "comp" / "grown.bin", "wb") as f:
            f.write(text[:30_000])
            f.truncate(MiB)
        files["grown.bin"] = text[:30_000] + bytes(MiB - 30_000)
        attrib = fsbuild._run("getfattr", "-n", "system.ntfs_attrib_be", "-e", "hex", mnt / "comp" / "text.txt")
        assert "=0x00000820" in attrib  # ARCHIVE | COMPRESSED
    finally:
        fsbuild._run("umount", mnt)
    cli("extract", vol, "/comp", tmp_path / "out")
    for name, data in files.items():
        assert (tmp_path / "out" / "comp" / name).read_bytes() == data, name


def test_a_damaged_chunk_under_a_compressed_file_is_named(tmp_path: Path) -> None:
    """`ls --damaged` names an LZNT1-compressed file whose clusters lie in an image chunk that fails its
    checksum, with whole compression units lost (a unit is decoded whole), and `extract` fails it."""
    need("ntfs")
    vol = tmp_path / "lznt1.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-c", "4096", "-L", "lznt1", vol)
    text = (Path(__file__).resolve().parents[2] / "README.md").read_bytes() * 8
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fsbuild._run("ntfs-3g", "-o", "rw,compression", vol, mnt)
    try:
        (mnt / "comp").mkdir()
        fsbuild._run("setfattr", "-n", "system.ntfs_attrib_be", "-v", "0x00000810", mnt / "comp")
        (mnt / "comp" / "text.txt").write_bytes(text)
        (mnt / "plain.txt").write_bytes(b"plain\n" * 1000)
    finally:
        fsbuild._run("umount", mnt)
    with FileSource(str(vol)) as source:
        layout = open_tree(source).layout("/comp/text.txt")
    assert layout.runs is None and layout.stored, layout  # read through the decoder; its clusters known
    disk, _n, foff, flen = layout.stored[1]
    img = tmp_path / "vol.img"
    cli("image", "--chunk-size", "64K", vol, img)
    damage_chunk(img, disk // (64 * 1024))
    found = {f["path"]: f for f in json.loads(cli("ls", "--damaged", "--json", img).stdout)}
    assert set(found) == {"/comp/text.txt"}, found
    lost = found["/comp/text.txt"]["lost"]
    assert any(r["offset"] <= foff and foff + flen <= r["offset"] + r["length"] for r in lost), (foff, flen, lost)
    assert all(r["offset"] % 65536 == 0 and r["length"] % 65536 == 0 for r in lost), lost  # whole units
    proc = cli("extract", img, "/", tmp_path / "out", check=3)
    assert "/comp/text.txt" in proc.stderr and (tmp_path / "out" / "plain.txt").read_bytes() == b"plain\n" * 1000


def test_a_file_whose_runs_span_many_mft_records(tmp_path: Path) -> None:
    """A file in thousands of fragments: its run list does not fit in one MFT record, so $DATA is split
    over several extension records (each piece from its own lowest VCN), found through an attribute list."""
    need("ntfs")
    vol = tmp_path / "frag.raw"
    fsbuild.random_image(vol, 48)
    fsbuild._run("mkntfs", "-F", "-Q", "-c", "4096", "-L", "frag", vol)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        (mnt / "f").mkdir()
        count = 0
        try:
            while True:  # the volume full of one-cluster files …
                (mnt / "f" / str(count)).write_bytes(b"x" * 4096)
                count += 1
        except OSError:
            pass
        for i in range(0, count, 2):  # … every other one gone: only one-cluster holes are free
            (mnt / "f" / str(i)).unlink()
        big = os.urandom((count // 2 - 200) * 4096)
        (mnt / "big.bin").write_bytes(big)
    attrs = fsbuild._run("ntfsinfo", "-F", "/big.bin", vol)
    assert "$ATTRIBUTE_LIST" in attrs and attrs.count("Dumping attribute $DATA") > 3
    with FileSource(str(vol)) as source:
        assert len(open_tree(source).data_runs("/big.bin")) > 1000
    img = tmp_path / "frag.img"
    cli("image", "--used-only", vol, img)
    cli("extract", img, "/big.bin", tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
