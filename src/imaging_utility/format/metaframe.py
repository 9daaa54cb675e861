"""Encode/decode our three metadata skippable frames: header, trailer, event (docs/image-format.md §3–§5).

Each frame's user data is a fixed part, then ``section_count`` sections
(4-byte ASCII tag, u32 length, bytes), then a CRC-32 of everything before it.
Readers skip sections whose tag they do not know.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptImageError
from . import c_image as c


def _sections_encode(sections: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for tag, data in sections:
        out += c.SECTION_HEADER.pack(tag, len(data))
        out += data
    return bytes(out)


def _sections_decode(buf: bytes, pos: int, count: int, what: str, base: int) -> dict[bytes, bytes]:
    sections: dict[bytes, bytes] = {}
    for _ in range(count):
        if pos + c.SECTION_HEADER.size > len(buf):
            raise CorruptImageError(f"{what}: section table runs past the frame at offset {base + pos:#x}")
        tag, length = c.SECTION_HEADER.unpack_from(buf, pos)
        pos += c.SECTION_HEADER.size
        if pos + length > len(buf):
            raise CorruptImageError(f"{what}: section {tag!r} of {length} bytes runs past the frame")
        sections[tag] = buf[pos : pos + length]
        pos += length
    if pos != len(buf):
        raise CorruptImageError(f"{what}: {len(buf) - pos} stray bytes after the sections")
    return sections


def _wrap(magic: int, body: bytes) -> bytes:
    body += c.CRC.pack(zlib.crc32(body))
    if len(body) > c.MAX_SKIPPABLE_DATA:
        raise ValueError(f"metadata frame of {len(body)} bytes exceeds the 4 GiB skippable-frame limit")
    return c.SKIPPABLE_HEADER.pack(magic, len(body)) + body


def _check_crc(data: bytes, what: str, offset: int) -> bytes:
    if len(data) < c.CRC.size:
        raise CorruptImageError(f"{what} at offset {offset:#x} is too short ({len(data)} bytes)")
    body, (crc,) = data[: -c.CRC.size], c.CRC.unpack_from(data, len(data) - c.CRC.size)
    if zlib.crc32(body) != crc:
        raise CorruptImageError(f"{what} at offset {offset:#x} fails its CRC-32 check")
    return body


def _check_version(major: int, minor: int, what: str) -> None:
    if major != c.FORMAT_VERSION_MAJOR:
        raise CorruptImageError(
            f"{what} has format version {major}.{minor}; this tool reads version {c.FORMAT_VERSION_MAJOR}.x "
            "(upgrade imaging-utility, or extract the raw data with 'zstd -dc')"
        )


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptImageError(f"{what}: META section is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CorruptImageError(f"{what}: META section is not a JSON object")
    return obj


def _pairs(data: bytes, what: str) -> list[tuple[int, int]]:
    if len(data) % c.RANGE_PAIR.size:
        raise CorruptImageError(f"{what}: range list of {len(data)} bytes is not a multiple of 16")
    out = []
    for s, e in c.RANGE_PAIR.iter_unpack(data):
        if e <= s:
            raise CorruptImageError(f"{what}: empty or inverted range [{s}, {e})")
        out.append((s, e - s))
    return out


def _encode_pairs(ranges: list[tuple[int, int]]) -> bytes:
    return b"".join(c.RANGE_PAIR.pack(o, o + n) for o, n in ranges)


@dataclass
class Header:
    chunk_size: int
    source_size: int
    sector_size: int = 512
    flags: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    allocation: bytes | None = None  # encoded AllocationMap (used-only images)
    version_minor: int = c.FORMAT_VERSION_MINOR

    @property
    def used_only(self) -> bool:
        return bool(self.flags & c.HEADER_FLAG_USED_ONLY)

    def encode(self) -> bytes:
        sections = [(c.SECTION_META, json.dumps(self.meta, sort_keys=True).encode())]
        if self.allocation is not None:
            sections.append((c.SECTION_ALLOCATION, self.allocation))
        fixed = c.HEADER_FIXED.pack(
            c.HEADER_SIGNATURE, c.FORMAT_VERSION_MAJOR, self.version_minor, self.flags,
            self.chunk_size, self.sector_size, self.source_size, len(sections), 0,
        )
        return _wrap(c.HEADER_MAGIC, fixed + _sections_encode(sections))

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Header:
        """Decode the header frame's user data (without the 8-byte skippable header)."""
        what = "image header"
        body = _check_crc(data, what, offset)
        if len(body) < c.HEADER_FIXED.size:
            raise CorruptImageError(f"{what} at offset {offset:#x} is truncated")
        sig, major, minor, flags, chunk, sector, size, count, _ = c.HEADER_FIXED.unpack_from(body)
        if sig != c.HEADER_SIGNATURE:
            raise CorruptImageError(f"{what}: bad signature {sig!r} at offset {offset:#x}")
        _check_version(major, minor, what)
        if not c.MIN_CHUNK_SIZE <= chunk <= c.MAX_CHUNK_SIZE:
            raise CorruptImageError(f"{what}: chunk size {chunk} out of range")
        if sector <= 0 or sector & (sector - 1):
            raise CorruptImageError(f"{what}: sector size {sector} is not a power of two")
        sections = _sections_decode(body, c.HEADER_FIXED.size, count, what, offset)
        meta = _json(sections.get(c.SECTION_META, b"{}"), what)
        return cls(chunk, size, sector, flags, meta, sections.get(c.SECTION_ALLOCATION), minor)


@dataclass
class Trailer:
    source_size: int
    chunk_count: int
    meta: dict[str, Any] = field(default_factory=dict)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)
    frame_crcs: bytes | None = None  # u32 LE per data frame: CRC-32 of its compressed bytes

    def encode(self) -> bytes:
        sections = [(c.SECTION_META, json.dumps(self.meta, sort_keys=True).encode())]
        if self.frame_crcs is not None:
            sections.append((c.SECTION_FRAME_CRCS, self.frame_crcs))
        flags = 0
        if self.bad_ranges:
            flags |= c.TRAILER_FLAG_BAD_RANGES
            sections.append((c.SECTION_BAD_RANGES, _encode_pairs(self.bad_ranges)))
        fixed = c.TRAILER_FIXED.pack(
            c.TRAILER_SIGNATURE, c.FORMAT_VERSION_MAJOR, c.FORMAT_VERSION_MINOR, flags,
            self.source_size, self.chunk_count, len(sections), 0,
        )
        return _wrap(c.TRAILER_MAGIC, fixed + _sections_encode(sections))

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Trailer:
        what = "image trailer"
        body = _check_crc(data, what, offset)
        if len(body) < c.TRAILER_FIXED.size:
            raise CorruptImageError(f"{what} at offset {offset:#x} is truncated")
        sig, major, minor, _flags, size, chunks, count, _ = c.TRAILER_FIXED.unpack_from(body)
        if sig != c.TRAILER_SIGNATURE:
            raise CorruptImageError(f"{what}: bad signature {sig!r} at offset {offset:#x}")
        _check_version(major, minor, what)
        sections = _sections_decode(body, c.TRAILER_FIXED.size, count, what, offset)
        meta = _json(sections.get(c.SECTION_META, b"{}"), what)
        crcs = sections.get(c.SECTION_FRAME_CRCS)
        if crcs is not None and len(crcs) != 4 * chunks:
            raise CorruptImageError(f"{what}: frame CRC list holds {len(crcs) // 4} entries for {chunks} chunks")
        return cls(size, chunks, meta, _pairs(sections.get(c.SECTION_BAD_RANGES, b""), what), crcs)


@dataclass
class Event:
    """Written right after the data frame of ``chunk_index`` when imaging found unreadable ranges in it."""

    chunk_index: int
    bad_ranges: list[tuple[int, int]]

    def encode(self) -> bytes:
        sections = [(c.SECTION_BAD_RANGES, _encode_pairs(self.bad_ranges))]
        fixed = c.EVENT_FIXED.pack(
            c.EVENT_SIGNATURE, c.FORMAT_VERSION_MAJOR, c.FORMAT_VERSION_MINOR, 0, self.chunk_index,
            len(sections), 0,
        )
        return _wrap(c.EVENT_MAGIC, fixed + _sections_encode(sections))

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> Event:
        what = "image event frame"
        body = _check_crc(data, what, offset)
        if len(body) < c.EVENT_FIXED.size:
            raise CorruptImageError(f"{what} at offset {offset:#x} is truncated")
        sig, major, minor, _flags, chunk, count, _ = c.EVENT_FIXED.unpack_from(body)
        if sig != c.EVENT_SIGNATURE:
            raise CorruptImageError(f"{what}: bad signature {sig!r} at offset {offset:#x}")
        _check_version(major, minor, what)
        sections = _sections_decode(body, c.EVENT_FIXED.size, count, what, offset)
        return cls(chunk, _pairs(sections.get(c.SECTION_BAD_RANGES, b""), what))
