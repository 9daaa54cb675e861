"""Btrfs file data that is inline or compressed (zlib, LZO, zstd), decoded here with every size bounded.

A file extent item (Linux ``fs/btrfs/ctree.h``, ``btrfs_file_extent_item``) says how many bytes its
extent decompresses to (``ram_bytes``) and how many it takes on disk (``disk_num_bytes``).  Both are
claims: btrfs never writes a compressed extent over 128 KiB either way (``BTRFS_MAX_COMPRESSED``,
``BTRFS_MAX_UNCOMPRESSED``), nor inline data past its item, so larger claims are damage.  Every decoder
stops at ``ram_bytes`` however much a hostile stream would expand, and a stream that would give more
(a zstd frame that says so in its header is refused before it is decoded) is an error.  As the kernel
does, a stream that ends cleanly before ``ram_bytes`` reads as zeros after its end; one that breaks is
an error.

LZO extents (``fs/btrfs/lzo.c``): a 4-byte total length, then segments of a 4-byte length and LZO1X
data, each decompressing to at most one sector; a segment header never crosses a sector boundary
(fewer than 4 bytes left in a sector are padding).
"""

from __future__ import annotations

import bisect
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

from ..blocks import BlockSource
from ..errors import CorruptImageError

MAX_EXTENT = 128 << 10  # BTRFS_MAX_COMPRESSED and BTRFS_MAX_UNCOMPRESSED
COMPRESS_NONE, COMPRESS_ZLIB, COMPRESS_LZO, COMPRESS_ZSTD = 0, 1, 2, 3
NAMES = {COMPRESS_ZLIB: "zlib", COMPRESS_LZO: "lzo", COMPRESS_ZSTD: "zstd"}
LZO_LEN = 4


def lzo_worst(sector: int) -> int:
    """lzo1x_worst_compress: the most one sector's LZO segment can take."""
    return sector + sector // 16 + 64 + 3


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of the file from ``start``: a hole (``data`` and ``disk`` None), plain bytes on the
    device at ``disk``, or bytes ``skip``… of a decoded extent (``data`` inline, or ``disk_length``
    bytes at ``disk``) that decodes to ``ram_bytes`` with ``compression``."""

    start: int
    length: int
    disk: int | None = None
    disk_length: int = 0
    compression: int = COMPRESS_NONE
    ram_bytes: int = 0
    skip: int = 0
    data: bytes | None = None


def decode(data: bytes, compression: int, ram_bytes: int, sector: int, what: str) -> bytes:
    """``data`` decompressed to exactly ``ram_bytes`` (zeros after a stream that ends early)."""
    if not 0 <= ram_bytes <= MAX_EXTENT:
        raise CorruptImageError(f"{what}: a compressed extent claims {ram_bytes} bytes (btrfs writes at most "
                                f"{MAX_EXTENT})")
    try:
        if compression == COMPRESS_ZLIB:
            inflate = zlib.decompressobj()
            out = inflate.decompress(data, ram_bytes)
            if len(out) == ram_bytes and not inflate.eof and inflate.decompress(inflate.unconsumed_tail, 1):
                raise CorruptImageError(f"{what}: its zlib data expands past the {ram_bytes} bytes of its extent")
            ended = inflate.eof or len(out) == ram_bytes
        elif compression == COMPRESS_ZSTD:  # one frame, then padding
            claimed = zstandard.get_frame_parameters(data).content_size
            if claimed != zstandard.CONTENTSIZE_UNKNOWN and claimed > ram_bytes:  # it would be allocated whole
                raise CorruptImageError(f"{what}: a zstd frame of {claimed} bytes in an extent of {ram_bytes}")
            out, ended = zstandard.ZstdDecompressor().decompress(data, max_output_size=ram_bytes), True
        elif compression == COMPRESS_LZO:
            out, ended = _lzo(data, ram_bytes, sector, what), True
            if len(out) > ram_bytes:
                raise CorruptImageError(f"{what}: its LZO data expands past the {ram_bytes} bytes of its extent")
        else:
            raise CorruptImageError(f"{what}: unknown compression type {compression}")
    except (zlib.error, zstandard.ZstdError, ValueError, IndexError, EOFError, RuntimeError) as e:
        name = NAMES.get(compression, str(compression))
        raise CorruptImageError(f"{what}: its {name} data does not decompress: {e}") from None
    if len(out) < ram_bytes and not ended:
        name = NAMES.get(compression, str(compression))
        raise CorruptImageError(f"{what}: its {name} data does not decompress: the stream is cut short at "
                                f"{len(out)} of {ram_bytes} bytes")
    return bytes(out[:ram_bytes]) + bytes(max(0, ram_bytes - len(out)))


def _lzo(data: bytes, ram_bytes: int, sector: int, what: str) -> bytes:
    from dissect.util.compression import lzo

    if len(data) < LZO_LEN:
        raise CorruptImageError(f"{what}: an LZO extent of {len(data)} bytes")
    total = min(int.from_bytes(data[:LZO_LEN], "little"), len(data))
    out = bytearray()
    pos = LZO_LEN
    while pos + LZO_LEN <= total and len(out) < ram_bytes:
        seg = int.from_bytes(data[pos : pos + LZO_LEN], "little")
        pos += LZO_LEN
        if not 0 < seg <= lzo_worst(sector) or pos + seg > total:
            raise CorruptImageError(f"{what}: an LZO segment of {seg} bytes at byte {pos - LZO_LEN} of its extent")
        part = lzo.decompress(data[pos : pos + seg], False, sector)
        if len(part) > sector:
            raise CorruptImageError(f"{what}: an LZO segment decompresses past one sector")
        out += part
        pos += seg
        if sector - pos % sector < LZO_LEN:
            pos += sector - pos % sector
    return bytes(out)


def check_compressed(disk_length: int, ram_bytes: int, skip: int, length: int, what: str) -> None:
    if not 0 < disk_length <= MAX_EXTENT or not 0 < ram_bytes <= MAX_EXTENT or skip + length > ram_bytes:
        raise CorruptImageError(f"{what}: a compressed extent of {disk_length} bytes on disk claims {ram_bytes} "
                                f"bytes and uses {skip}+{length} of them (btrfs writes at most {MAX_EXTENT})")


class ExtentFile(io.RawIOBase):
    """A seekable stream over a file's ``pieces``; one decoded extent is kept for the next read."""

    def __init__(self, source: BlockSource, size: int, pieces: list[Piece], sector: int, what: str,
                 check: Callable[[int, memoryview], None] | None = None) -> None:
        super().__init__()
        self._check = check
        self._source, self._size, self._pieces = source, size, pieces
        self._starts = [p.start for p in pieces]
        self._sector, self._what = sector, what
        self._pos = 0
        self._cached: tuple[tuple[object, ...], bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        done = 0
        while done < want:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            piece = self._pieces[i] if i >= 0 else None
            rel = self._pos - piece.start if piece else 0
            if piece is None or rel >= piece.length:  # between extents: a hole
                nxt = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
                take = min(want - done, nxt - self._pos)
                view[done : done + take] = bytes(take)
            else:
                take = min(want - done, piece.length - rel)
                part = view[done : done + take]
                if piece.data is None and piece.disk is None:
                    part[:] = bytes(take)
                elif piece.compression == COMPRESS_NONE and piece.data is None:
                    assert piece.disk is not None
                    self._source.readinto_at(piece.disk + rel, part)
                    if self._check is not None:
                        self._check(piece.disk + rel, part)
                else:
                    decoded = self._decoded(piece)
                    part[:] = decoded[piece.skip + rel : piece.skip + rel + take]
            done += take
            self._pos += take
        return done

    def _decoded(self, piece: Piece) -> bytes:
        key = (piece.disk, piece.disk_length, piece.compression, piece.ram_bytes, piece.data)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        raw = piece.data
        if raw is None:
            assert piece.disk is not None
            buf = bytearray(piece.disk_length)
            self._source.readinto_at(piece.disk, buf)
            if self._check is not None:
                self._check(piece.disk, memoryview(buf))
            raw = bytes(buf)
        if piece.compression == COMPRESS_NONE:
            data = raw[: piece.ram_bytes] + bytes(max(0, piece.ram_bytes - len(raw)))
        else:
            data = decode(raw, piece.compression, piece.ram_bytes, self._sector, self._what)
        if len(data) < piece.skip + piece.length:
            raise CorruptImageError(f"{self._what}: an extent decodes to {len(data)} bytes, the file uses "
                                    f"{piece.skip}+{piece.length}")
        self._cached = (key, data)
        return data

