"""Golden vectors (docs/image-format.md §12): how each committed image was made, and a parser of images
written from the spec with struct, json and zstandard only — independent of the project's reader.

``python tests/format/golden/make.py`` rebuilds the images and ``expected.json``; run it only when the
format changes on purpose (a new minor version), never to make a failing test pass.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

GOLDEN = Path(__file__).parent / "golden"
KIB = 1024


def _text(n: int, seed: int) -> bytes:
    line = b"%06d golden vector line, imaging-utility format 1.0, seed %d\n"
    out = b"".join(line % (i, seed) for i in range(n // 40 + 1))
    return out[:n]


def _pseudo_random(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def _full_source() -> bytes:
    # 5 chunks of 64 KiB + 1000: text, zeros, mixed, zeros, random head; a short all-zero last chunk
    return (_text(64 * KIB, 1) + bytes(64 * KIB) + _text(30 * KIB, 2) + bytes(34 * KIB) + bytes(64 * KIB)
            + _pseudo_random(4 * KIB, 3) + _text(60 * KIB, 4) + bytes(1000))


def _big_chunk_source() -> bytes:
    # 1 MiB chunks: a text chunk, an all-zero chunk, a short chunk of text and zeros
    return _text(1 << 20, 5) + bytes(1 << 20) + _text(100 * KIB, 6) + bytes(12345)


def _split_source() -> bytes:
    return _pseudo_random(64 * KIB, 7) + _pseudo_random(64 * KIB, 8) + _text(64 * KIB, 9) + bytes(64 * KIB)


def _rescue_source() -> bytes:
    return _text(4 * 64 * KIB + 777, 10)


RESCUE_BAD = [(64 * KIB - 512, 1024), (3 * 64 * KIB + 4096, 512)]  # the first spans chunks 0 and 1


@dataclass
class Recipe:
    name: str
    chunk_size: int
    digests: tuple[str, ...]
    source: Callable[[], bytes] | None  # None: the FAT volume built by make.py (kept as the decoded image)
    split_size: int | None = None
    bad: list[tuple[int, int]] = field(default_factory=list)
    used_only: bool = False
    level: int = 3


RECIPES = [
    Recipe("full-64k-sha256", 64 * KIB, ("sha256",), _full_source),
    Recipe("full-1m-all-digests", 1 << 20, ("sha256", "blake3", "md5"), _big_chunk_source, level=1),
    Recipe("used-fat12-128k-blake3", 128 * KIB, ("blake3",), None, used_only=True),
    Recipe("split-64k-md5", 64 * KIB, ("md5",), _split_source, split_size=128 * KIB),
    Recipe("rescue-64k-sha256", 64 * KIB, ("sha256",), _rescue_source, bad=RESCUE_BAD),
    Recipe("empty-no-digest", 64 * KIB, (), lambda: b""),
]

FIXED_META = {"created": "2025-01-01T00:00:00.000000Z", "finished": "2025-01-01T00:00:01.000000Z",
              "hostname": "golden", "command_line": ["imaging-utility", "image", "golden"]}
GOLDEN_VERSION = "0.1.0"  # the tool version the golden images were written by


def image_paths(name: str, folder: Path = GOLDEN) -> list[Path]:
    single = folder / f"{name}.img"
    return [single] if single.exists() else sorted(folder.glob(f"{name}.img.0*"))


@contextmanager
def fixed_metadata() -> Iterator[None]:
    """Make a capture's time, host, command line and tool version those of the golden images (the version
    comes from git tags, and its length changes the header frame's size)."""
    import sys

    from imaging_utility.ops import _pipeline, capture

    saved = capture.utc_now, _pipeline.utc_now, capture.platform.node, sys.argv, capture.__version__
    capture.__version__ = GOLDEN_VERSION
    times = iter([FIXED_META["created"], FIXED_META["finished"]] * 2)
    capture.utc_now = _pipeline.utc_now = lambda: next(times)  # type: ignore[assignment]  # header, trailer
    capture.platform.node = lambda: FIXED_META["hostname"]  # type: ignore[assignment]
    sys.argv = list(FIXED_META["command_line"])
    try:
        yield
    finally:
        (capture.utc_now, _pipeline.utc_now, capture.platform.node, sys.argv,  # type: ignore[assignment]
         capture.__version__) = saved


def write_image(recipe: Recipe, source: bytes, dest: Path, amap: list[tuple[int, int]] | None = None,
                filesystem: dict[str, Any] | None = None, cluster_size: int = 512) -> None:
    """Image ``source`` the way the golden image ``recipe`` was made."""
    from imaging_utility.devices.source import FileSource
    from imaging_utility.extents import AllocationMap
    from imaging_utility.ops.capture import CaptureOptions, capture

    raw = dest.parent / f"{recipe.name}.source"
    raw.write_bytes(source)
    try:
        with FileSource(str(raw)) as src, fixed_metadata():
            opts = CaptureOptions(chunk_size=recipe.chunk_size, level=recipe.level, digests=recipe.digests,
                                  split_size=recipe.split_size, threads=2,
                                  identity={"kind": "file", "path": f"/golden/{recipe.name}", "size": len(source)})
            if amap is not None:
                opts.allocation = AllocationMap(amap, len(source), cluster_size)
                opts.filesystem = filesystem
            if recipe.bad:
                opts.chunk_reader = _failing_reader(src, recipe.bad)
            capture(src, str(dest), opts)
    finally:
        raw.unlink()


def _failing_reader(source: Any, bad: list[tuple[int, int]]) -> Callable[[int, memoryview], list[tuple[int, int]]]:
    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        source.readinto_at(offset, buf)
        hits = []
        for o, n in bad:
            s, e = max(o, offset), min(o + n, offset + len(buf))
            if s < e:
                buf[s - offset : e - offset] = bytes(e - s)
                hits.append((s, e - s))
        return hits
    return read


def fat_volume(path: Path) -> None:
    """A 1 MiB FAT12 volume with a few files, made by mkfs.fat and mtools (for make.py)."""
    subprocess.run(["mkfs.fat", "-C", "--invariant", "-F", "12", "-s", "4", "-n", "GOLDEN", "-i", "1234abcd",
                    str(path), "1024"], check=True, capture_output=True)
    for i, size in enumerate((100, 5000, 70000, 3 * KIB)):
        f = path.parent / f"f{i}.txt"
        f.write_bytes(_text(size, 20 + i))
        subprocess.run(["mcopy", "-m", "-i", str(path), str(f), f"::F{i}.TXT"], check=True, capture_output=True)
        f.unlink()


# --- an independent parse of an image ------------------------------------------------------------------

def _ranges(data: bytes) -> list[list[int]]:
    return [[s, e] for s, e in struct.iter_unpack("<QQ", data)]


def _meta_frame(user: bytes, fixed: str) -> dict[str, Any]:
    body, (crc,) = user[:-4], struct.unpack("<I", user[-4:])
    assert zlib.crc32(body) == crc
    head = struct.unpack_from(fixed, body)
    pos, count = struct.calcsize(fixed), head[-2]
    sections: dict[str, bytes] = {}
    for _ in range(count):
        tag, length = struct.unpack_from("<4sI", body, pos)
        sections[tag.decode()] = body[pos + 8 : pos + 8 + length]
        pos += 8 + length
    assert pos == len(body)
    return {"fixed": list(head[1:]), "sections": sections}


def parse(paths: list[Path]) -> dict[str, Any]:
    """Everything §12 promises about an image, read from its bytes by the spec."""
    raw = b"".join(p.read_bytes() for p in paths)
    n, descriptor, magic = struct.unpack_from("<IBI", raw, len(raw) - 9)
    assert magic == 0x8F92EAB1 and descriptor == 0x80
    table_off = len(raw) - 8 - 12 * n - 9
    assert struct.unpack_from("<II", raw, table_off) == (0x184D2A5E, 12 * n + 9)
    entries = [list(struct.unpack_from("<III", raw, table_off + 8 + 12 * k)) for k in range(n)]
    out: dict[str, Any] = {"files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths},
                           "seek_table": entries, "events": [], "chunk_sha256": []}
    dctx = zstandard.ZstdDecompressor()
    decoded = hashlib.sha256()
    crcs, zero_chunks = [], []
    off = 0
    for csize, dsize, checksum in entries:
        frame = raw[off : off + csize]
        frame_magic = struct.unpack_from("<I", frame)[0]
        if dsize:
            data = dctx.decompress(frame, max_output_size=dsize)
            assert len(data) == dsize and int.from_bytes(frame[-4:], "little") == checksum
            out["chunk_sha256"].append(hashlib.sha256(data).hexdigest())
            decoded.update(data)
            crcs.append(f"{zlib.crc32(frame):08x}")
            zero_chunks.append(frame == spec_zero_frame(dsize))
        elif frame_magic == 0x184D2A51:
            h = _meta_frame(frame[8:], "<8sHHIIIQII")
            out["header"] = {"fixed": h["fixed"], "meta": json.loads(h["sections"]["META"]),
                             "amap": _ranges(h["sections"].get("AMAP", b""))}
        elif frame_magic == 0x184D2A53:
            e = _meta_frame(frame[8:], "<8sHHIQII")
            out["events"].append({"fixed": e["fixed"], "badr": _ranges(e["sections"]["BADR"])})
        elif frame_magic == 0x184D2A52:
            t = _meta_frame(frame[8:], "<8sHHIQQII")
            fcrc = t["sections"]["FCRC"]
            out["trailer"] = {"fixed": t["fixed"], "meta": json.loads(t["sections"]["META"]),
                              "badr": _ranges(t["sections"].get("BADR", b"")),
                              "fcrc": [f"{v:08x}" for (v,) in struct.iter_unpack("<I", fcrc)]}
        off += csize
    assert off == table_off
    assert crcs == out["trailer"]["fcrc"]
    out["source_sha256"] = decoded.hexdigest()
    out["layout"] = _layout(out, zero_chunks)
    return out


def spec_zero_frame(n: int) -> bytes:
    """The zero frame of §2.1, built from its table."""
    out = struct.pack("<IBBI", 0xFD2FB528, 0x84, 0x38, n)
    left = n
    while left:
        take = min(left, 131072)
        left -= take
        out += ((take << 3) | 2 | (left == 0)).to_bytes(3, "little") + b"\0"
    return out + zstandard.ZstdCompressor(write_checksum=True).compress(bytes(n))[-4:]


def _layout(image: dict[str, Any], zero_chunks: list[bool]) -> dict[str, int]:
    """§11: unreadable (BADR), then unallocated (outside AMAP), then zero (zero-frame chunks), then data."""
    chunk_size, size = image["header"]["fixed"][3], image["header"]["fixed"][5]
    used_only = image["header"]["fixed"][2] & 1
    bad, amap = image["trailer"]["badr"], image["header"]["amap"]

    def inside(ranges: list[list[int]], lo: int, hi: int) -> int:
        return sum(max(0, min(e, hi) - max(s, lo)) for s, e in ranges)

    lay = {"data": 0, "zero": 0, "unallocated": 0, "unreadable": inside(bad, 0, size)}
    for i, zero in enumerate(zero_chunks):
        lo, hi = i * chunk_size, min(size, (i + 1) * chunk_size)
        # bytes of this chunk that are neither bad nor (for used-only) unallocated
        kept = [[s, e] for s, e in ([[lo, hi]] if not used_only else amap) if e > lo and s < hi]
        allocated = sum(min(e, hi) - max(s, lo) for s, e in kept)
        allocated_bad = sum(inside(bad, max(s, lo), min(e, hi)) for s, e in kept)
        lay["unallocated"] += (hi - lo) - allocated - (inside(bad, lo, hi) - allocated_bad)
        lay["zero" if zero else "data"] += allocated - allocated_bad
    return lay
