"""Helpers for the image tests: make sources, image them through the API, compare images."""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import os
import random
from pathlib import Path

from imaging_utility.devices.source import FileSource
from imaging_utility.format import c_image as c
from imaging_utility.format.index import walk_frames
from imaging_utility.ops.capture import CaptureOptions, CaptureResult, capture
from imaging_utility.storage.local import PartReader, resolve_parts

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog; disk imaging test line\n" % i
                for i in range(20000))


def mixed_bytes(size: int, seed: int = 1, region: int = 64 * 1024) -> bytes:
    """Deterministic zero / text-like / random regions, like a used disk."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        n = min(region, size - len(out))
        if kind < 0.3:
            out += bytes(n)
        elif kind < 0.75:
            start = rng.randrange(len(TEXT) - n) if len(TEXT) > n else 0
            out += TEXT[start : start + n]
        else:
            out += rng.randbytes(n)
    return bytes(out)


def write_source(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def image_file(src: Path, dest: Path, **opts: object) -> CaptureResult:
    with FileSource(str(src)) as source:
        options = CaptureOptions(identity={"kind": "file", "size": source.size}, **opts)  # type: ignore[arg-type]
        return capture(source, str(dest), options)


def data_frames(path: Path | str) -> list[bytes]:
    """The zstd data frames of an image (single or split), in order."""
    reader = PartReader(resolve_parts(str(path)))
    try:
        return [reader.read_at(f.offset, f.length) for f in walk_frames(reader.read_at, reader.size)
                if f.magic == c.ZSTD_MAGIC]
    finally:
        reader.close()


def image_bytes(path: Path | str) -> bytes:
    return b"".join(Path(p).read_bytes() for p in resolve_parts(str(path)))


def sparse_file(path: Path, size: int, islands: dict[int, bytes]) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, data in islands.items():
            fh.seek(off)
            fh.write(data)
    return path


def file_sha256(path: Path | str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def remove(path: Path) -> None:
    for p in [path, *path.parent.glob(path.name + ".0*")]:
        if p.exists():
            os.unlink(p)


def another_name(path: Path, how: str) -> Path:
    """``path`` itself (``how`` anything else), or a new "hard link" or "symlink" to it beside it."""
    if how == "hard link":
        other = path.with_name(path.name + ".hard")
        os.link(path, other)
        return other
    if how == "symlink":
        other = path.with_name(path.name + ".link")
        other.symlink_to(path)
        return other
    return path


def run_cli(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``imaging-utility ARGS`` in this process (fast): exit code, stdout, stderr."""
    from imaging_utility.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident(dev: str, offset: int, length: int) -> int:
    """Bytes of the file or device ``dev`` in [offset, offset + length) that are in its page cache (mincore)."""
    fd = os.open(dev, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * -(-length // mmap.PAGESIZE))()
            assert _libc.mincore(addr, length, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec) * mmap.PAGESIZE
        finally:
            _libc.munmap(addr, length)
    finally:
        os.close(fd)


def damage_chunk(img: Path, chunk: int) -> None:
    """Flip one bit in the middle of chunk ``chunk``'s compressed frame, in place: the chunk then fails
    its checksum (a one-file image)."""
    from imaging_utility.image.reader import open_image

    with open_image(str(img)) as reader:
        at = reader.chunk_offsets[chunk] + reader.chunk_csizes[chunk] // 2
    raw = bytearray(img.read_bytes())
    raw[at] ^= 0x40
    img.write_bytes(raw)


def used_only_round_trip(disk: Path, tmp: Path) -> tuple[int, bytes, bytes]:
    """``image --used-only`` of ``disk`` and ``restore`` of that image: (used bytes the image reports, the
    disk's bytes, the restored bytes)."""
    import json

    from conftest import cli

    image = tmp / f"{disk.stem}.img.zst"
    run = cli("image", "--used-only", "--json", disk, image)
    back = tmp / f"{disk.stem}.back"
    cli("restore", image, back)
    return int(json.loads(run.stdout)["used_bytes"]), disk.read_bytes(), back.read_bytes()
