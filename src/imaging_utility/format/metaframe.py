"""Encode/decode our three metadata skippable frames: header, trailer, event (docs/image-format.md §3).

Each frame's user data is a fixed part, then ``section_count`` sections
(4-byte ASCII tag, u32 length, bytes), then a CRC-32 of everything before it.
Readers skip sections whose tag they do not know; a known tag twice is damage.
Decoding checks everything a frame can check on its own (CRC, signature,
version, flags against sections, range lists, the META schema); what needs
other frames (event chunk vs trailer, digests vs header) is checked by the
image reader.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptImageError, UnsupportedError
from . import c_image as c
from .schema import check_header_meta, check_trailer_meta

_KNOWN_TAGS = (c.SECTION_META, c.SECTION_ALLOCATION, c.SECTION_BAD_RANGES, c.SECTION_FRAME_CRCS)


def starts_like_image(head: bytes | bytearray | memoryview) -> bool:
    """Whether a file beginning with ``head`` (any length, even empty) can be an image or the start of one:
    its first bytes are the header frame's magic, or a prefix of it (a capture cut inside it)."""
    magic = c.HEADER_MAGIC.to_bytes(4, "little")
    first = bytes(head[:4])
    return first == magic[: len(first)]


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
        if tag in sections and tag in _KNOWN_TAGS:
            raise CorruptImageError(f"{what}: section {tag!r} appears twice")
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


def check_version(major: int, minor: int, what: str) -> None:
    """Format 1.x (and the pre-release numbering 2.0 of 1.0) is read; anything else is refused."""
    if major != c.FORMAT_VERSION_MAJOR and (major, minor) != c.PRERELEASE_VERSION:
        raise UnsupportedError(
            f"{what} has image format {major}.{minor}; this tool reads format {c.FORMAT_VERSION_MAJOR}.x "
            "(upgrade imaging-utility, or extract the raw data with 'zstd -dc')"
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: JSONDecodeError, and integers past Python's digit limit; RecursionError: deep nesting
        raise CorruptImageError(f"{what}: META section is not valid JSON: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise CorruptImageError(f"{what}: META section is not a JSON object")
    return obj


def decode_ranges(data: bytes, limit: int, what: str) -> list[tuple[int, int]]:
    """An ``AMAP`` or ``BADR`` list as ``(offset, length)`` pairs: each non-empty, sorted, not overlapping
    (a range may start where the previous one ends), none past ``limit`` (the source size)."""
    if len(data) % c.RANGE_PAIR.size:
        raise CorruptImageError(f"{what}: range list of {len(data)} bytes is not a multiple of 16")
    out = []
    prev = 0
    for s, e in c.RANGE_PAIR.iter_unpack(data):
        if e <= s:
            raise CorruptImageError(f"{what}: empty or inverted range [{s}, {e})")
        if s < prev:
            raise CorruptImageError(f"{what}: range [{s}, {e}) overlaps or precedes the one before it")
        if e > limit:
            raise CorruptImageError(f"{what}: range [{s}, {e}) passes the end of the source ({limit} bytes)")
        out.append((s, e - s))
        prev = e
    return out


def allocation_sha256(source_size: int, amap: bytes) -> str:
    """The header's ``used_only.allocation_sha256``: SHA-256 of ``u64 source_size`` then the AMAP bytes."""
    h = hashlib.sha256(struct.pack("<Q", source_size))
    h.update(amap)
    return h.hexdigest()


def _encode_pairs(ranges: list[tuple[int, int]]) -> bytes:
    return b"".join(c.RANGE_PAIR.pack(o, o + n) for o, n in ranges)


@dataclass
class Header:
    chunk_size: int
    source_size: int
    sector_size: int = 512
    flags: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    allocation: bytes | None = None  # the AMAP section as stored (used-only images)
    version_minor: int = c.FORMAT_VERSION_MINOR
    version_major: int = c.FORMAT_VERSION_MAJOR

    @property
    def used_only(self) -> bool:
        return bool(self.flags & c.HEADER_FLAG_USED_ONLY)

    def encode(self) -> bytes:
        sections = [(c.SECTION_META, json.dumps(self.meta, sort_keys=True).encode())]
        if self.allocation is not None:
            sections.append((c.SECTION_ALLOCATION, self.allocation))
        fixed = c.HEADER_FIXED.pack(
            c.HEADER_SIGNATURE, self.version_major, self.version_minor, self.flags,
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
        check_version(major, minor, what)
        if not c.MIN_CHUNK_SIZE <= chunk <= c.MAX_CHUNK_SIZE or chunk % 4096:
            raise CorruptImageError(f"{what}: chunk size {chunk} is not a multiple of 4096 from "
                                    f"{c.MIN_CHUNK_SIZE} to {c.MAX_CHUNK_SIZE}")
        if sector <= 0 or sector & (sector - 1):
            raise CorruptImageError(f"{what}: sector size {sector} is not a power of two")
        sections = _sections_decode(body, c.HEADER_FIXED.size, count, what, offset)
        if c.SECTION_META not in sections:
            raise CorruptImageError(f"{what}: no META section")
        meta = _json(sections[c.SECTION_META], what)
        allocation = sections.get(c.SECTION_ALLOCATION)
        used_only = bool(flags & c.HEADER_FLAG_USED_ONLY)
        if used_only != (allocation is not None):
            raise CorruptImageError(f"{what}: the used-only flag is {'set' if used_only else 'clear'} but "
                                    f"the AMAP section is {'missing' if used_only else 'present'}")
        if allocation is not None:
            decode_ranges(allocation, size, f"{what} AMAP")
        check_header_meta(meta, used_only, what)
        return cls(chunk, size, sector, flags, meta, allocation, minor, major)


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
        sig, major, minor, flags, size, chunks, count, _ = c.TRAILER_FIXED.unpack_from(body)
        if sig != c.TRAILER_SIGNATURE:
            raise CorruptImageError(f"{what}: bad signature {sig!r} at offset {offset:#x}")
        check_version(major, minor, what)
        sections = _sections_decode(body, c.TRAILER_FIXED.size, count, what, offset)
        if c.SECTION_META not in sections:
            raise CorruptImageError(f"{what}: no META section")
        meta = _json(sections[c.SECTION_META], what)
        check_trailer_meta(meta, what)
        crcs = sections.get(c.SECTION_FRAME_CRCS)
        if crcs is None or len(crcs) != 4 * chunks:
            held = "no" if crcs is None else f"{len(crcs) / 4:g}"
            raise CorruptImageError(f"{what}: frame CRC list holds {held} entries for {chunks} chunks")
        bad = sections.get(c.SECTION_BAD_RANGES)
        flagged = bool(flags & c.TRAILER_FLAG_BAD_RANGES)
        if flagged != (bad is not None):
            raise CorruptImageError(f"{what}: the bad-ranges flag is {'set' if flagged else 'clear'} but the "
                                    f"BADR section is {'missing' if flagged else 'present'}")
        return cls(size, chunks, meta, decode_ranges(bad or b"", size, f"{what} BADR"), crcs)


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
        check_version(major, minor, what)
        sections = _sections_decode(body, c.EVENT_FIXED.size, count, what, offset)
        bad = sections.get(c.SECTION_BAD_RANGES)
        if not bad:
            raise CorruptImageError(f"{what} at offset {offset:#x} holds no bad ranges")
        return cls(chunk, decode_ranges(bad, (1 << 64) - 1, what))

    def check_chunk(self, chunk_size: int, source_size: int, what: str = "image event frame") -> None:
        """Every range lies inside chunk ``chunk_index``."""
        start = self.chunk_index * chunk_size
        end = min(start + chunk_size, source_size)
        if start >= source_size:
            raise CorruptImageError(f"{what} names chunk {self.chunk_index}, past the last chunk")
        for o, n in self.bad_ranges:
            if o < start or o + n > end:
                raise CorruptImageError(f"{what} for chunk {self.chunk_index}: range [{o}, {o + n}) lies "
                                        f"outside the chunk [{start}, {end})")
