"""NTFS specifics of the file tree: our fast MFT record parser against dissect's, hostile names edited into a
real NTFS volume, and extraction into a destination that fills up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root
from files.filehelpers import MiB, inside, need
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.ntfs_record import Record
from imaging_utility.filesystems.tree import FileTree, open_tree


def _ntfs_with_everything(tmp: Path) -> Path:
    """NTFS holding what the fast parser must get right: resident and empty files, sparse files, a file with
    an initialized size below its size, ADS, hard links, an (Interix) symlink, a 400-entry directory."""
    need("ntfs")
    files = tmp / "files"
    fsbuild.make_tree(files, large_mib=2)
    vol = tmp / "ntfs.raw"
    fsbuild.make_ntfs(vol, 48, files)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        (mnt / "tiny.txt").write_bytes(b"resident")
        (mnt / "empty.bin").write_bytes(b"")
        with open(mnt / "sparse.bin", "wb") as f:
            f.seek(3 * MiB)
            f.write(b"tail after a hole")
        with open(mnt / "grown.bin", "wb") as f:  # size set past the written data: valid data length < size
            f.write(os.urandom(70_000))
            f.truncate(2 * MiB)
        many = mnt / "crowded"
        many.mkdir()
        for i in range(400):
            (many / f"file-{i:03d}-{'x' * (i % 40)}.dat").write_bytes(os.urandom(i * 37))
        os.link(mnt / "tiny.txt", many / "tiny-link.txt")
        os.symlink("../tiny.txt", many / "sym")
    return vol


def _snapshot(tree: FileTree) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for entry in tree.walk("/"):
        row: list[object] = [entry]
        if entry.type == "file":
            for stream in (None, *entry.streams):
                layout = tree.layout(entry.path, stream)
                with tree.open(entry.path, stream) as f:
                    row += [layout.size, f.read()]
        out.append(tuple(row))
    return out


def test_fast_records_equal_dissect(tmp_path: Path) -> None:
    vol = _ntfs_with_everything(tmp_path)
    with FileSource(str(vol)) as src:
        fast_tree = open_tree(src)
        fast = _snapshot(fast_tree)
        loaded = [fast_tree.backend.load(n) for _name, n in fast_tree.backend.children(fast_tree.backend.root())]
        slow_tree = open_tree(src)
        slow_tree.backend.records = None  # dissect for every record
        slow = _snapshot(slow_tree)
    assert len(fast) == len(slow) > 450
    for a, b in zip(fast, slow, strict=True):
        assert a == b, a[0]
    # the fast parser really took the records (none of the root's needs dissect)
    assert loaded and all(isinstance(r, Record) for r in loaded)
    by_path = {row[0].path: row for row in fast}  # type: ignore[attr-defined]
    assert by_path["/sparse.bin"][2] == bytes(3 * MiB) + b"tail after a hole"
    with FileSource(str(vol)) as src:
        runs = {p: open_tree(src).layout(p).runs for p in ("/sparse.bin", "/grown.bin")}
    assert runs["/sparse.bin"] and runs["/sparse.bin"][0][1] is None  # the hole is not read
    # past the valid data length a stream reads as zeros, whatever the cluster holds (dissect reads the cluster)
    grown = runs["/grown.bin"]
    assert grown and grown[-1][0] == 70_000 and grown[-1][1] is None and by_path["/grown.bin"][2][70_000:] == bytes(
        2 * MiB - 70_000)


# placeholder name (as created) -> the name written over it in both the $I30 index key and $FILE_NAME
NTFS_HOSTILE = {
    "PLACEHOLDER-DOTDOT-000001.txt": "..",
    "PLACEHOLDER-ESCAPE-000002.txt": "../../../../tmp/ntfs-escape",
    "PLACEHOLDER-NULCTL-000003.txt": "nul\0ctl\x01\x1b[31m\x7f",
    "PLACEHOLDER-SLASH--000004.txt": "/abs/name",
}


def _rename_in_mft_records(data: bytearray, old: str, new: str) -> int:
    """Rewrite ``old`` as ``new`` (FileNameLength byte and UTF-16 name) in every MFT record of the volume,
    undoing and redoing the records' fix-ups around the edit; returns the number of names rewritten."""
    raw_old, raw_new = old.encode("utf-16-le"), new.encode("utf-16-le").ljust(2 * len(old), b"\0")
    count = 0
    for start in range(0, len(data), 1024):
        if data[start : start + 4] != b"FILE":
            continue
        rec = bytearray(data[start : start + 1024])
        usa = int.from_bytes(rec[4:6], "little")
        usn = rec[usa : usa + 2]
        for j in range(2):  # sector ends hold the USN on disk; the real bytes are in the update sequence array
            rec[512 * j + 510 : 512 * j + 512] = rec[usa + 2 + 2 * j : usa + 4 + 2 * j]
        pos = rec.find(raw_old)
        while pos >= 0:
            assert rec[pos - 2] == len(old)  # FileNameLength, namespace, then the name
            rec[pos - 2] = len(new)
            rec[pos : pos + len(raw_old)] = raw_new
            count += 1
            pos = rec.find(raw_old, pos + 1)
        for j in range(2):
            rec[usa + 2 + 2 * j : usa + 4 + 2 * j] = rec[512 * j + 510 : 512 * j + 512]
            rec[512 * j + 510 : 512 * j + 512] = usn
        data[start : start + 1024] = rec
    return count


def test_hostile_ntfs_names_never_escape(tmp_path: Path) -> None:
    need("ntfs")
    files = tmp_path / "files"
    files.mkdir()
    for i, name in enumerate(NTFS_HOSTILE):  # one per directory: its index stays in the MFT record
        (files / f"h{i}").mkdir()
        (files / f"h{i}" / name).write_text(f"payload {i}\n")
    vol = tmp_path / "hostile-ntfs.raw"
    fsbuild.make_ntfs(vol, 16, files)
    data = bytearray(vol.read_bytes())
    for old, new in NTFS_HOSTILE.items():
        assert _rename_in_mft_records(data, old, new) == 2, old  # its $FILE_NAME and its directory's index
    vol.write_bytes(bytes(data))
    listing = cli("ls", "-R", vol, "/").stdout.split("\n")
    assert "/h1/..%2F..%2F..%2F..%2Ftmp%2Fntfs-escape" in listing and "/h3/%2Fabs%2Fname" in listing
    assert "/h0/%2E%2E" in listing  # a file named '..' is listed, escaped, not dropped
    out = tmp_path / "deep" / "out"
    before = set(inside(tmp_path))
    proc = cli("extract", vol, "/", out)
    assert "renamed:" in proc.stdout
    created = set(inside(tmp_path)) - before
    assert created and all(p.is_relative_to(out.parent) for p in created)
    assert not Path("/tmp/ntfs-escape").exists()
    payloads = sorted(p.read_text() for p in out.glob("h*/*") if p.is_file())
    assert payloads == [f"payload {i}\n" for i in range(len(NTFS_HOSTILE))]


def test_extract_into_a_full_destination(tmp_path: Path) -> None:
    need("ntfs")
    need_root()
    files = tmp_path / "files"
    fsbuild.make_tree(files, large_mib=2)
    vol = tmp_path / "ntfs.raw"
    fsbuild.make_ntfs(vol, 32, files)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        proc = cli("extract", vol, "/", small / "out", check=7)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("writers", [1, 3])
def test_extract_order_does_not_change_results(tmp_path: Path, writers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk-ordered, multi-threaded writing gives the same files and mtimes as one writer."""
    from imaging_utility.ops import extract as ops_extract
    from imaging_utility.ops import extract_batch

    need("ntfs")
    monkeypatch.setattr(extract_batch, "WRITERS", writers)
    monkeypatch.setattr(ops_extract, "BATCH", 7)  # many small batches: directories finished across batches
    src_files = tmp_path / "files"
    fsbuild.make_tree(src_files, large_mib=1)
    vol = tmp_path / "ntfs.raw"
    expected = fsbuild.make_ntfs(vol, 32, src_files)
    dest = tmp_path / "out"
    with FileSource(str(vol)) as src:
        tree = open_tree(src)
        report = ops_extract.extract(tree, ["/"], str(dest))
        entries = {e.path: e for e in tree.walk("/")}
    assert report.ok, report.failed
    got = fsbuild.hash_dir(dest)
    assert {k: v for k, v in expected.items() if ":" not in k} == got
    for path, entry in entries.items():
        if entry.type in ("file", "dir") and entry.mtime_ns is not None:
            assert (dest / path.lstrip("/")).stat().st_mtime_ns == entry.mtime_ns, path


@pytest.fixture(scope="module")
def shrunk_directory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A directory that grew to 3,000 entries and shrank to 60 (ntfs-3g): most of its index buffers are
    freed in the $I30 bitmap but still hold their old entries."""
    need("ntfs")
    vol = tmp_path_factory.mktemp("shrunk") / "ntfs.raw"
    fsbuild.make_ntfs(vol, 64, None)
    with fsbuild.mounted(vol, "ntfs") as mnt:
        d = mnt / "d"
        d.mkdir()
        for i in range(3000):
            (d / f"file-with-a-rather-long-name-{i:05d}.txt").write_bytes(b"%d" % i)
        os.sync()
        for i in range(3000):
            if i % 50:
                (d / f"file-with-a-rather-long-name-{i:05d}.txt").unlink()
        os.sync()
        names = sorted(os.listdir(d))
    assert len(names) == 60
    return vol, names


def test_a_shrunk_directory_lists_what_ntfs_3g_lists(shrunk_directory: tuple[Path, list[str]],
                                                     tmp_path: Path) -> None:
    """Before, the freed buffers' entries came back: about 200 deleted names as errors and three names
    listed twice (their records are in use again), exit 3."""
    vol, names = shrunk_directory
    proc = cli("ls", vol, "/d")
    assert proc.stdout.split() == names or sorted(proc.stdout.split()) == names
    assert proc.stderr == ""
    cli("extract", vol, "/d", tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out" / "d")) == names
    for name in names:
        assert (tmp_path / "out" / "d" / name).read_bytes() == b"%d" % int(name[-9:-4])


def test_a_damaged_index_buffer_in_use_is_an_error(shrunk_directory: tuple[Path, list[str]],
                                                   tmp_path: Path) -> None:
    """An index buffer the bitmap marks in use that fails its checks: the directory is an error, not a
    listing with that buffer's entries silently left out."""
    src, _ = shrunk_directory
    vol = tmp_path / "ntfs.raw"
    vol.write_bytes(src.read_bytes())
    with FileSource(str(vol)) as source:
        tree = open_tree(source)
        node = tree.backend.fs.mft.get(tree.stat("/d").inode)
        index = node.index("$I30")
        bitmap = node.open("$I30", 0xB0).read()
        first = next(i for i in range(len(bitmap) * 8) if bitmap[i >> 3] >> (i & 7) & 1)
        size = index.root.bytes_per_index_buffer
        runs = node.attributes[0xA0][0].dataruns()
        cluster = tree.backend.fs.cluster_size
    disk = _vcn_to_disk(runs, first * size // cluster) * cluster + first * size % cluster
    with open(vol, "r+b") as f:
        f.seek(disk)
        f.write(b"XXXX")  # the INDX magic
    proc = cli("ls", vol, "/d", check=8)
    assert "index buffer" in proc.stderr and "damaged" in proc.stderr and proc.stderr.count("\n") == 1


def _vcn_to_disk(runs: list[tuple[int | None, int]], vcn: int) -> int:
    pos = 0
    for lcn, count in runs:
        if vcn < pos + count:
            assert lcn is not None
            return lcn + vcn - pos
        pos += count
    raise AssertionError(vcn)
