"""Helpers for the export tests: small disks with an MBR or a GPT (ext4 and FAT16 partitions over random
bytes), their full and used-only images, and the independent readers of every output format.

Readers: ``qemu-img check/compare``; libvhdi and libvmdk through the system Python's ``pyvhdi`` and
``pyvmdk`` (Debian ``python3-libvhdi``/``python3-libvmdk``); ``dissect.hypervisor`` in this venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from conftest import IN_CI, need_tools
from fsbuild import make_ext, make_fat, make_tree, random_image
from imaging_utility.blocks import BlockSource, WindowSource
from imaging_utility.devices.source import FileSource
from imaging_utility.export import ExportOptions, Feed, Sink, Writer, make_writer
from imaging_utility.extents import AllocationMap, Extent, ExtentKind
from imaging_utility.filesystems import allocation_map
from imaging_utility.image.reader import open_image
from imaging_utility.ops.capture import CaptureOptions, capture
from imaging_utility.partitions import read_partitions

MiB = 1 << 20
SYSTEM_PYTHON = "/usr/bin/python3"
QEMU_FORMAT = {"vhdx": "vhdx", "vhdx-fixed": "vhdx", "vhd": "vpc", "vhd-fixed": "vpc", "qcow2": "qcow2",
               "vmdk": "vmdk", "vmdk-stream": "vmdk", "raw": "raw"}
QEMU_CHECKS = {"vhdx", "qcow2", "vmdk"}  # formats `qemu-img check` knows
ALL_FORMATS = list(QEMU_FORMAT)
DISK_MIB = 32
# (start MiB, size MiB, filesystem): ext4 with the test tree, FAT16 with it too; the rest stays random
PARTITIONS = ((1, 14, "ext4"), (16, 12, "fat16"))


def need_export_tools() -> None:
    need_tools("qemu-img", "sfdisk", "mke2fs", "debugfs", "mkfs.vfat", "mcopy", "vhdiinfo", "vmdkinfo")
    for module in ("pyvhdi", "pyvmdk"):
        proc = subprocess.run([SYSTEM_PYTHON, "-c", f"import {module}"], capture_output=True)
        if proc.returncode != 0:
            import pytest

            msg = f"needs {module} in the system Python (Debian python3-lib{module[2:]})"
            pytest.fail(msg, pytrace=False) if IN_CI else pytest.skip(msg)


def build_disk(path: Path, scheme: str, work: Path) -> Path:
    """A DISK_MIB disk of random bytes with an MBR (``dos``) or GPT table and two filesystems."""
    random_image(path, DISK_MIB, seed=11 if scheme == "gpt" else 12)
    lines = [f"label: {scheme}", "unit: sectors"]
    for start, size, fs in PARTITIONS:
        kind = ("0FC63DAF-8483-4772-8E79-3D69D8477DE4" if fs == "ext4" else "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
                ) if scheme == "gpt" else ("83" if fs == "ext4" else "0e")
        lines.append(f"start={start * 2048}, size={size * 2048}, type={kind}")
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)], input="\n".join(lines).encode(),
                   check=True, capture_output=True)
    files = work / "tree"
    if not files.exists():
        make_tree(files, large_mib=2)
    for start, size, fs in PARTITIONS:
        vol = work / f"{scheme}-{fs}.vol"
        if fs == "ext4":
            make_ext(vol, size, files)
        else:
            make_fat(vol, size, files, fat_bits=16)
        with open(path, "r+b") as out, open(vol, "rb") as src:
            out.seek(start * MiB)
            out.write(src.read())
        vol.unlink()
    return path


def used_only_map(source: BlockSource) -> AllocationMap:
    """What a used-only whole-disk image keeps: each known filesystem's used ranges, every other byte."""
    table = read_partitions(source)
    ranges: list[tuple[int, int]] = []
    pos = 0
    for part in sorted(table.partitions, key=lambda p: p.offset):
        ranges.append((pos, part.offset - pos))
        _info, amap = allocation_map(WindowSource(source, part.offset, part.length))
        ranges += [(part.offset + e.offset, e.length) for e in amap]
        pos = part.end
    ranges.append((pos, source.size - pos))
    return AllocationMap(ranges, source.size)


class SectorSource(FileSource):
    """A file that says its logical sectors are ``sector_size`` bytes (what a 4Kn disk reports)."""

    def __init__(self, path: str, sector_size: int) -> None:
        super().__init__(path)
        self._sector_size = sector_size


def make_image(src: Path, dest: Path, *, used_only: bool = False, sector_size: int = 512,
               chunk_size: int = 1 << 20) -> Path:
    with SectorSource(str(src), sector_size) as source:
        opts = CaptureOptions(identity={"kind": "file", "size": source.size}, chunk_size=chunk_size,
                              allocation=used_only_map(source) if used_only else None)
        capture(source, str(dest), opts)
    return dest


def image_raw(image: Path, dest: Path) -> Path:
    """The bytes an image stands for (unallocated ranges as zeros), as a raw file."""
    with open_image(str(image)) as reader, open(dest, "wb") as out:
        for off in range(0, reader.size, 4 * MiB):
            out.write(reader.read(off, 4 * MiB))
    return dest


def sha256_of(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = os.path.getsize(path) if size is None else size
        while left:
            data = f.read(min(left, 4 * MiB))
            h.update(data)
            left -= len(data)
    return h.hexdigest()


# --- independent readers ------------------------------------------------------------------------------
def qemu_check(fmt: str, path: Path) -> None:
    proc = subprocess.run(["qemu-img", "check", "-f", QEMU_FORMAT[fmt], str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "No errors were found" in proc.stdout, proc.stdout + proc.stderr


def qemu_compare(fmt: str, raw: Path, path: Path) -> None:
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", QEMU_FORMAT[fmt], str(raw), str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Images are identical" in proc.stdout, proc.stdout + proc.stderr


_LIB_READER = r"""
import hashlib, json, sys
kind, path = sys.argv[1], sys.argv[2]
ranges = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
if kind == "vhdi":
    import pyvhdi
    f = pyvhdi.file()
    f.open(path)
else:
    import pyvmdk
    f = pyvmdk.handle()
    f.open(path)
    f.open_extent_data_files()
size = f.get_media_size()
if ranges is not None:
    print(json.dumps([f.read_buffer_at_offset(n, off).hex() for off, n in ranges]))
    sys.exit(0)
h = hashlib.sha256()
off = 0
while off < size:
    n = min(4 << 20, size - off)
    data = f.read_buffer_at_offset(n, off)
    assert len(data) == n, (len(data), n, off)
    h.update(data)
    off += n
print(size, h.hexdigest())
"""


def read_libyal(fmt: str, path: Path) -> tuple[int, str]:
    """(media size, SHA-256 of the virtual disk) as libvhdi (VHD/VHDX) or libvmdk (VMDK) reads it."""
    kind = "vmdk" if fmt.startswith("vmdk") else "vhdi"
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _LIB_READER, kind, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    size, digest = proc.stdout.split()
    return int(size), digest


def read_libyal_ranges(fmt: str, path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes at each ``(offset, length)`` as libvhdi/libvmdk reads them."""
    kind = "vmdk" if fmt.startswith("vmdk") else "vhdi"
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _LIB_READER, kind, str(path), json.dumps(ranges)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [bytes.fromhex(x) for x in json.loads(proc.stdout)]


def read_dissect_ranges(fmt: str, path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    from dissect.hypervisor.disk import qcow2, vhd, vhdx, vmdk

    with open(path, "rb") as fh:
        stream = (vmdk.VMDK(fh) if fmt.startswith("vmdk") else vhdx.VHDX(fh) if fmt.startswith("vhdx")
                  else vhd.VHD(fh) if fmt.startswith("vhd") else qcow2.QCow2(fh).open())
        out = []
        for off, n in ranges:
            stream.seek(off)
            out.append(stream.read(n))
        return out


def read_dissect(fmt: str, path: Path, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of the virtual disk as dissect.hypervisor reads it."""
    from dissect.hypervisor.disk import qcow2, vhd, vhdx, vmdk

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if fmt.startswith("vmdk"):
            disk = vmdk.VMDK(fh)
            # dissect's aligned reads run past a capacity that is not a multiple of 64 KiB (IndexError,
            # also on QEMU's own files); read that tail straight from the extent, sector by sector.
            body = size - size % 65536
            _hash_stream(disk, body, h)
            if size > body:
                h.update(disk.disks[0].read_sectors(body // 512, -(-(size - body) // 512))[: size - body])
            return h.hexdigest()
        stream = vhdx.VHDX(fh) if fmt.startswith("vhdx") else vhd.VHD(fh) if fmt.startswith("vhd") else (
            qcow2.QCow2(fh).open())
        _hash_stream(stream, size, h)
    return h.hexdigest()


def _hash_stream(stream: object, size: int, h: hashlib._Hash) -> None:
    stream.seek(0)  # type: ignore[attr-defined]
    left = size
    while left:
        data = stream.read(min(left, 4 * MiB))  # type: ignore[attr-defined]
        assert data, f"short read at {size - left}"
        h.update(data)
        left -= len(data)


def check_all_readers(fmt: str, out: Path, raw: Path) -> None:
    """qemu-img check (where it checks) and compare, libvhdi/libvmdk, dissect: all see ``raw``'s bytes."""
    size = os.path.getsize(raw)
    want = sha256_of(raw)
    if fmt in QEMU_FORMAT and QEMU_FORMAT[fmt] in QEMU_CHECKS:
        qemu_check(fmt, out)
    qemu_compare(fmt, raw, out)
    if fmt.startswith(("vhd", "vmdk")):
        media, digest = read_libyal(fmt, out)
        assert media >= size
        if media == size:
            assert digest == want, f"{fmt}: libyal reads other bytes"
    if fmt != "raw":
        assert read_dissect(fmt, out, size) == want, f"{fmt}: dissect reads other bytes"
    else:
        assert sha256_of(out) == want


class IslandSource:
    """A large, mostly empty source: ``islands`` {offset: bytes} are DATA, everything else reads as zeros
    and is reported as ZERO (what an image of a sparse disk reports), without the image around it."""

    def __init__(self, size: int, islands: dict[int, bytes], sector_size: int = 512) -> None:
        self._size = size
        self.islands = dict(sorted(islands.items()))
        self._sector_size = sector_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self._sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        if offset < 0 or offset + len(buf) > self._size:
            raise ValueError("out of range")
        view = memoryview(buf)
        view[:] = bytes(len(view))
        for start, data in self.islands.items():
            s, e = max(start, offset), min(start + len(data), offset + len(view))
            if s < e:
                view[s - offset : e - offset] = data[s - start : e - start]

    def extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos, end = offset, offset + length
        for start, data in self.islands.items():
            s, e = max(start, pos), min(start + len(data), end)
            if s >= e:
                continue
            if s > pos:
                out.append(Extent(pos, s - pos, ExtentKind.ZERO))
            out.append(Extent(s, e - s, ExtentKind.DATA))
            pos = e
        if pos < end:
            out.append(Extent(pos, end - pos, ExtentKind.ZERO))
        return out


def write_with(fmt: str, source: BlockSource, out: Path, **opts: object) -> Writer:
    """Run a writer straight over a ``BlockSource`` (no image, no OUT.partial): the export/ layer alone."""
    writer = make_writer(source.size, source.sector_size,
                         ExportOptions(fmt, file_name=out.name, **opts))  # type: ignore[arg-type]
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer.write(Sink(fd, str(out)), Feed(source, writer.granule, transform=writer.transform))
    finally:
        os.close(fd)
    return writer


def rescued_image(raw: Path, dest: Path, bad: tuple[int, int]) -> Path:
    """An image of ``raw`` as ``image --rescue`` leaves it when the ``bad`` (offset, length) bytes could not be
    read: zeros there, the range recorded as unreadable."""
    with FileSource(str(raw)) as source:
        def read_chunk(offset: int, view: memoryview) -> list[tuple[int, int]]:
            source.readinto_at(offset, view)
            s, e = max(bad[0], offset), min(bad[0] + bad[1], offset + len(view))
            if s >= e:
                return []
            view[s - offset : e - offset] = bytes(e - s)
            return [(s, e - s)]

        capture(source, str(dest), CaptureOptions(chunk_reader=read_chunk,
                                                  identity={"kind": "file", "size": source.size}))
    return dest
