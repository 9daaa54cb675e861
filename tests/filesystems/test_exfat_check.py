"""An exFAT volume whose directories name clusters its Allocation Bitmap marks free (``exfat_check``): a
file written by a device that keeps no dirty flag and then unplugged before its bitmap was written, or
damage since.  Used-only imaging maps from the bitmap, so it would drop that file's data: it refuses the
volume instead (auto images it in full).  Volumes are made by ``mkfs.exfat`` and written through
exfat-fuse; the bitmap bits are then cleared as a lost bitmap write leaves them."""

from __future__ import annotations

from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_root, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import allocation_map, exfat
from imaging_utility.filesystems.exfat_check import (
    ALLOCATION_POSSIBLE,
    ATTR_DIRECTORY,
    NO_FAT_CHAIN,
    _entries,
    _entry_sets,
)
from imaging_utility.filesystems.tree_exfat import set_checksum

Stream = tuple[str, int, int, int, int]


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools(*fsbuild.TOOLS["exfat"])
    need_root()
    files = tmp_path_factory.mktemp("exfatfiles")
    (files / "docs").mkdir()
    (files / "docs" / "contiguous.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, one extent
    path = tmp_path_factory.mktemp("exfatcheck") / "exfat.raw"
    fsbuild.make_exfat(path, 48, files)
    return path


def _streams(path: Path) -> dict[str, Stream]:
    """Every entry set of the volume by path, walked as the check walks it."""
    out: dict[str, Stream] = {}
    with FileSource(str(path)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        vol = exfat._Volume(src, boot)
        todo: list[tuple[str, Stream | None]] = [("", None)]
        while todo:
            where, node = todo.pop()
            raws = ((raw for *_, raw in vol.root_entries()) if node is None
                    else _entries(vol, where, node[3], node[4], bool(node[2] & NO_FAT_CHAIN)))
            for entry in _entry_sets(raws):
                out[f"{where}/{entry[0]}"] = entry
                if entry[1] & ATTR_DIRECTORY:
                    todo.append((f"{where}/{entry[0]}", entry))
    return out


def _clear_bit(path: Path, cluster: int) -> None:
    _flip_bit(path, cluster, was=True)


def _set_bit(path: Path, cluster: int) -> None:
    _flip_bit(path, cluster, was=False)


def _flip_bit(path: Path, cluster: int, was: bool) -> None:
    """Flip ``cluster``'s bit in the Allocation Bitmap (the one of the first FAT), which must be ``was``."""
    with FileSource(str(path)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        vol = exfat._Volume(src, boot)
        first, length = next(exfat.DIR_ENTRY.unpack(raw)[1:] for _o, t, raw in vol.root_entries()
                             if t == exfat.ENTRY_BITMAP)
        (off, _n), = vol.extents(first, length, "bitmap")[:1]
    with open(path, "r+b") as f:
        at = off + (cluster - 2) // 8
        f.seek(at)
        byte = f.read(1)[0]
        assert bool(byte >> ((cluster - 2) % 8) & 1) == was, f"the cluster's bit was not {int(was)} to begin with"
        f.seek(at)
        f.write(bytes([byte ^ 1 << ((cluster - 2) % 8)]))


@pytest.mark.parametrize(("name", "where"), [
    ("/frag/fragmented.bin", "first"),  # a FAT-chained file: its first cluster
    ("/docs/contiguous.bin", "middle"),  # a NoFatChain file: any of its clusters
    ("/docs", "first"),  # a directory
])
def test_a_stream_on_clusters_the_bitmap_marks_free(volume: Path, name: str, where: str, tmp_path: Path) -> None:
    vol = tmp_path / "vol.raw"
    vol.write_bytes(volume.read_bytes())
    cli("image", "--used-only", vol, tmp_path / "clean.img")  # as made, the directories agree with the bitmap
    streams = _streams(vol)
    _name, attributes, flags, first, length = streams[name]
    if name == "/docs/contiguous.bin":
        assert flags & NO_FAT_CHAIN and length == 1 << 20
    if name == "/frag/fragmented.bin":
        assert not flags & NO_FAT_CHAIN  # exfat-fuse gave it a chain: it is in several pieces
    with FileSource(str(vol)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        cluster = first + (length // boot.cluster_size // 2 if where == "middle" else 0)
    _clear_bit(vol, cluster)
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    kind = "directory" if attributes & ATTR_DIRECTORY else "file"
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"its {kind} {name} has clusters from {first} that the Allocation Bitmap marks free" in proc.stderr
    proc = cli("image", "--used-only=auto", vol, tmp_path / "auto.img")
    assert "the Allocation Bitmap marks free" in proc.stderr
    cli("restore", tmp_path / "auto.img", tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == vol.read_bytes()


def test_a_chained_files_later_cluster_marked_free(volume: Path, tmp_path: Path) -> None:
    """A chained stream is checked cluster by cluster along its FAT chain, not only where it starts."""
    vol = tmp_path / "vol.raw"
    vol.write_bytes(volume.read_bytes())
    _name, _a, flags, first, _length = _streams(vol)["/frag/fragmented.bin"]
    assert not flags & NO_FAT_CHAIN
    with FileSource(str(vol)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        fat = exfat._Volume(src, boot)
        previous, cluster = first, fat.fat_entry(first)
        while cluster == previous + 1:  # find where the chain first jumps
            previous, cluster = cluster, fat.fat_entry(cluster)
    assert 2 <= cluster < boot.cluster_count + 2
    _clear_bit(vol, cluster)  # the first cluster of the file's second piece
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert f"its file /frag/fragmented.bin has clusters from {first} that the Allocation Bitmap marks free" \
        in proc.stderr, proc.stderr


def _add_vendor_allocation(path: Path, cluster: int) -> str:
    """Rewrite the root's last entry set with a Vendor Allocation entry (0xE1, §7.9) for ``cluster``, as a
    writer would: the set moves to where the end marker was (SecondaryCount and SetChecksum updated), its
    old entries are marked not in use.  Returns the file's name."""
    with FileSource(str(path)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        entries = list(exfat._Volume(src, boot).root_entries())
    start = max(i for i, (_o, t, _r) in enumerate(entries) if t == 0x85)
    old = entries[start : start + 1 + entries[start][2][1]]
    end = entries[-1][0] + 32
    vendor = (bytes([0xE1, ALLOCATION_POSSIBLE | NO_FAT_CHAIN]) + bytes(range(16, 32)) + b"\0\0"
              + cluster.to_bytes(4, "little") + boot.cluster_size.to_bytes(8, "little"))
    assert len(vendor) == 32
    data = bytearray(b"".join(r for _o, _t, r in old)) + vendor
    assert (end - boot.cluster_offset(boot.root_cluster)) + len(data) < boot.cluster_size, "no room in the root"
    data[1] += 1  # SecondaryCount
    data[2:4] = set_checksum(bytes(data)).to_bytes(2, "little")
    with open(path, "r+b") as f:
        for off, kind, _r in old:
            f.seek(off)
            f.write(bytes([kind & 0x7F]))  # InUse cleared
        f.seek(end)
        f.write(data)
    return next(_entry_sets(iter([bytes(data[i : i + 32]) for i in range(0, len(data), 32)])))[0]


@pytest.mark.parametrize("marked", [True, False], ids=["marked-used", "marked-free"])
def test_a_vendor_allocation_on_clusters_the_bitmap_marks_free(volume: Path, marked: bool, tmp_path: Path) -> None:
    """A Vendor Allocation entry owns clusters of its own (the Allocation Bitmap must mark them): used-only
    keeps them when the bitmap does, and refuses the volume when it does not (the vendor's data would be
    dropped)."""
    vol = tmp_path / "vol.raw"
    vol.write_bytes(volume.read_bytes())
    with FileSource(str(vol)) as src:
        boot = exfat.probe(src)
        assert boot is not None
        _info, amap = allocation_map(src)
        cluster = boot.cluster_count  # near the heap's end: free on this nearly empty volume
        at = boot.cluster_offset(cluster)
        assert amap.used_in(at, boot.cluster_size) == []
    name = _add_vendor_allocation(vol, cluster)
    if marked:
        _set_bit(vol, cluster)
        cli("image", "--used-only", vol, tmp_path / "x.img")
        cli("restore", tmp_path / "x.img", tmp_path / "back.raw")
        with open(vol, "rb") as a, open(tmp_path / "back.raw", "rb") as b:
            a.seek(at)
            b.seek(at)
            assert a.read(boot.cluster_size) == b.read(boot.cluster_size)
        return
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"its entry set of /{name} [entry 0xe1] has clusters from {cluster} that the Allocation Bitmap" \
        in proc.stderr, proc.stderr
