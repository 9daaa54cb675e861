"""NTFS files compressed by WOF (Windows' CompactOS, ``compact /exe``): listed, read, served and extracted as
their data, decoded by our XPRESS and LZX decoders.

The volumes are real NTFS (``mkntfs``), the files written through ntfs-3g as Windows lays them out: a sparse
unnamed stream of the file's size, the chunks compressed by wimlib (the peer implementation of both formats)
in a ``WofCompressedData`` stream, and the WOF reparse point set through ntfs-3g's
``system.ntfs_reparse_data``.  ntfs-3g without its system-compression plugin cannot read them back (EIO)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsbuild
import wimlib
from conftest import cli
from files.filehelpers import curl, need, webdav
from imagetools import damage_chunk
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems.tree import open_tree

TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_bytes()


def _x86(n: int, seed: int) -> bytes:
    """Code-like bytes: call instructions (0xE8 + a 32-bit displacement, what LZX's E8 filter rewrites) among
    a small set of other opcodes."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.2:
            out += b"\xe8" + rnd.randrange(-4096, 4096).to_bytes(4, "little", signed=True)
        else:
            out += rnd.choice([b"\x48\x89\xe5", b"\x55", b"\xc3", b"\x48\x83\xec\x20", b"\x8b\x45\xfc", b"\x90"])
    return bytes(out[:n])


def _text(n: int) -> bytes:
    return (TEXT * (n // len(TEXT) + 1))[:n]


def _mixed(n: int, seed: int) -> bytes:
    third = n // 3
    return _text(third) + random.Random(seed).randbytes(third) + _x86(n - 2 * third, seed)


# name → (WOF algorithm, data)
GOOD = {
    "Windows/System32/notes.txt": ("XPRESS4K", _text(150_000)),
    "Windows/System32/one.txt": ("XPRESS4K", b"x"),
    "Windows/mixed8k.bin": ("XPRESS8K", _mixed(90_000, 1)),
    "Windows/code16k.dll": ("XPRESS16K", _x86(100_000, 2)),
    "Program Files/app/code.exe": ("LZX", _x86(200_000, 3)),
    "Program Files/app/mixed.bin": ("LZX", _mixed(120_000, 4)),
    "Program Files/app/exact.txt": ("LZX", _text(32768)),
    "Program Files/app/one-more.txt": ("LZX", _text(32769)),
    "empty.txt": ("XPRESS4K", b""),
}


def _wof_file(mnt: Path, name: str, size: int, stream: bytes, reparse: bytes) -> None:
    path = mnt / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.truncate(path, size)  # sparse: ntfs-3g allocates nothing for it
    if stream:
        Path(f"{path}:{'WofCompressedData'}").write_bytes(stream)
    os.setxattr(path, "system.ntfs_reparse_data", reparse)


@pytest.fixture(scope="module")
def wof_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    need("ntfs")
    vol = tmp_path_factory.mktemp("wof") / "wof.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "wof", vol)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        for name, (algorithm, data) in GOOD.items():
            number = wimlib.ALGORITHMS[algorithm][0]
            _wof_file(mnt, name, len(data), wimlib.wof_stream(algorithm, data), wimlib.wof_reparse(number))
        (mnt / "plain.txt").write_bytes(b"plain\n")
        # not read here, each said why: a WIMBoot file (its data in a WIM elsewhere), an unknown algorithm
        _wof_file(mnt, "wimboot.dll", 5000, b"", wimlib.wof_reparse(0, provider=1))
        _wof_file(mnt, "future.bin", 5000, wimlib.wof_stream("XPRESS4K", _text(5000)), wimlib.wof_reparse(9))
    yield vol


def test_wof_files_are_listed_read_and_extracted_as_their_data(wof_volume: Path, tmp_path: Path) -> None:
    listing = {e["path"]: e for e in json.loads(cli("ls", "-R", "--json", wof_volume, "/").stdout)}
    for name, (_alg, data) in GOOD.items():
        entry = listing["/" + name]
        assert (entry["type"], entry["size"]) == ("file", len(data)), name
        assert entry.get("streams", []) == (["WofCompressedData"] if data else []), name  # its data, stored
    assert listing["/wimboot.dll"]["type"] == "reparse"

    # through an image of the volume, used-only: the compressed streams' clusters are in use and kept
    img = tmp_path / "wof.img"
    cli("image", "--used-only", wof_volume, img)
    out = tmp_path / "out"
    proc = cli("extract", img, "/", out)
    for name, (_alg, data) in GOOD.items():
        got = (out / name).read_bytes()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
    assert (out / "plain.txt").read_bytes() == b"plain\n"
    assert not (out / "wimboot.dll").exists() and not (out / "future.bin").exists()
    assert "wimboot.dll -> reparse tag 0x80000017: WIMBoot file: its data is in a WIM file outside this volume" \
        in proc.stderr
    assert "future.bin -> reparse tag 0x80000017: WOF compression 9 (version 1) is not one this program reads" \
        in proc.stderr

    # served over WebDAV (curl: the whole file and a range), and read at any offset through the tree
    code = GOOD["Program Files/app/code.exe"][1]
    with webdav(img) as url:
        assert curl(f"{url}Program%20Files/app/code.exe").stdout == code
        assert curl("-r", "40000-99999", f"{url}Program%20Files/app/code.exe").stdout == code[40000:100000]
        assert curl(f"{url}Windows/code16k.dll").stdout == GOOD["Windows/code16k.dll"][1]
    with FileSource(str(wof_volume)) as source:
        tree = open_tree(source)
        rnd = random.Random(5)
        for name, (_alg, data) in GOOD.items():
            with tree.open("/" + name) as f:
                for _ in range(20):
                    at = rnd.randrange(len(data) + 10) if data else 0
                    n = rnd.randrange(1, 70_000)
                    f.seek(at)
                    assert f.read(n) == data[at : at + n], (name, at, n)


def _table(offsets: list[int]) -> bytes:
    return b"".join(o.to_bytes(4, "little") for o in offsets)


def test_damaged_wof_files_fail_alone_with_one_line(tmp_path: Path) -> None:
    """Claims a WOF file makes that cannot hold: each such file fails on its own with a line that names it and
    what is wrong, the others are extracted, and nothing is allocated for a size the stream cannot hold."""
    need("ntfs")
    vol = tmp_path / "bad.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mkntfs", "-F", "-Q", "-L", "bad", vol)
    text = _text(3 * 4096)
    good = wimlib.wof_stream("XPRESS4K", text)
    chunks = [wimlib.compress(wimlib.XPRESS, 4096, text[i : i + 4096]) for i in range(0, len(text), 4096)]
    assert all(chunks)
    a, b, _ = (len(x or b"") for x in chunks)
    x4k = wimlib.wof_reparse(0)
    bad = {  # name → (size claimed, WofCompressedData, why it fails)
        "huge.bin": (1 << 40, good, "cannot fit in its"),
        "past-end.bin": (len(text), _table([a, a + b + 5000]) + b"".join(x or b"" for x in chunks), "claims bytes"),
        "backwards.bin": (len(text), _table([a + b, a]) + b"".join(x or b"" for x in chunks), "claims bytes"),
        "too-big.bin": (len(text), _table([a, a + 4097]) + (chunks[0] or b"") + bytes(4097) + (chunks[2] or b""),
                        "claims bytes"),
        "garbage.bin": (len(text), _table([a, a + b]) + b"\x11" * a + (chunks[1] or b"") + (chunks[2] or b""),
                        "Huffman code is over-subscribed"),
        "cut-short.bin": (len(text), _table([a, a + b // 2]) + (chunks[0] or b"") + (chunks[1] or b"")[: b // 2]
                          + (chunks[2] or b""), "chunk 1: the chunk ends"),
        "lzx-garbage.bin": (40000, _table([1000]) + bytes(1000) + _text(40000 - 32768), "LZX chunk 0"),
    }
    with fsbuild.mounted(vol, "ntfs") as mnt:
        for name, (size, stream, _why) in bad.items():
            _wof_file(mnt, name, size, stream, wimlib.wof_reparse(1) if name.startswith("lzx") else x4k)
        _wof_file(mnt, "good.txt", len(text), good, x4k)

    with FileSource(str(vol)) as source:
        tree = open_tree(source)
        assert tree.open("/good.txt").read() == text
        for name, (_size, _stream, why) in bad.items():
            with pytest.raises(CorruptImageError, match=why):
                tree.open("/" + name).read()
    proc = cli("extract", vol, "/", tmp_path / "out", check=3)
    assert (tmp_path / "out" / "good.txt").read_bytes() == text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("imaging-utility: error:")]
    assert len(errors) == len(bad), proc.stderr
    for name, (_size, _stream, why) in bad.items():
        assert any(f"/{name}" in line and why in line for line in errors), (name, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_a_damaged_chunk_under_a_wof_file_is_named(wof_volume: Path, tmp_path: Path) -> None:
    """`ls --damaged` names the stream that holds a WOF file's data when an image chunk under it fails its
    checksum, and `extract` fails that file alone."""
    with FileSource(str(wof_volume)) as source:
        _foff, disk, _n = open_tree(source).data_runs("/Program Files/app/code.exe", "WofCompressedData")[0]
    img = tmp_path / "wof.img"
    cli("image", "--chunk-size", "64K", wof_volume, img)
    chunk = disk // (64 * 1024)
    damage_chunk(img, chunk)
    found = json.loads(cli("ls", "--damaged", "--json", img).stdout)
    assert "/Program Files/app/code.exe:WofCompressedData" in {f["path"] for f in found}, found
    proc = cli("extract", img, "/Program Files", tmp_path / "out", check=3)
    assert f"/Program Files/app/code.exe: chunk {chunk} (" in proc.stderr and "(partial file kept)" in proc.stderr
    app = tmp_path / "out" / "Program Files" / "app"
    assert (app / "mixed.bin").read_bytes() == GOOD["Program Files/app/mixed.bin"][1]
