"""zstd frame encode/decode; the only module that imports ``zstandard``.

Thread-safety: ``Codec`` is safe to share between threads — it keeps one
compressor and one decompressor per thread (zstandard objects are not thread
safe).  ``compress``/``decompress`` release the GIL inside libzstd.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import zstandard

from ..errors import ChunkCorruptError
from . import c_image as c


def zstd_library_version() -> str:
    return str(zstandard.ZSTD_VERSION if isinstance(zstandard.ZSTD_VERSION, str) else
               ".".join(map(str, zstandard.ZSTD_VERSION)))


def zero_frame_length(length: int) -> int:
    """Bytes of the zero frame for a chunk of ``length`` bytes (spec §2.1), without building it."""
    blocks = -(-length // c.ZERO_FRAME_BLOCK)
    return c.ZERO_FRAME_HEAD.size + 4 * blocks + 4


@functools.lru_cache(maxsize=64)
def zero_checksum(length: int) -> int:
    """Low 32 bits of XXH64 (seed 0) of ``length`` zero bytes: the zero frame's Content_Checksum.

    libzstd computes XXH64 as it compresses; zeros fed in 1 MiB pieces cost no big buffer."""
    piece = bytes(min(length, 1 << 20))
    cobj = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=False).compressobj(length)
    left = length
    while left:
        take = min(left, len(piece))
        cobj.compress(piece[:take] if take < len(piece) else piece)
        left -= take
    return int.from_bytes(cobj.flush()[-4:], "little")


@functools.lru_cache(maxsize=64)
def zero_frame(length: int) -> bytes:
    """The zero frame for a chunk of ``length`` (1 … 256 MiB) bytes (spec §2.1): a frame header with a
    128 KiB window and the content size, one RLE block of byte 0 per 128 KiB, the content checksum.
    Built from the spec, not by a compressor, so it is the same bytes whatever the zstd library."""
    if not 0 < length <= c.MAX_CHUNK_SIZE:
        raise ValueError(f"zero frame length {length} out of range")
    out = bytearray(c.ZERO_FRAME_HEAD.pack(c.ZSTD_MAGIC, c.ZERO_FRAME_DESCRIPTOR, c.ZERO_FRAME_WINDOW, length))
    left = length
    while left:
        take = min(left, c.ZERO_FRAME_BLOCK)
        left -= take
        header = (take << 3) | (c.ZSTD_BLOCK_RLE << 1) | (0 if left else 1)
        out += header.to_bytes(3, "little") + b"\0"
    out += zero_checksum(length).to_bytes(4, "little")
    return bytes(out)


class Codec:
    def __init__(self, level: int = c.DEFAULT_LEVEL) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level {level} out of range 1..22")
        self.level = level
        self._local = threading.local()

    def _cctx(self) -> Any:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(
                level=self.level, write_checksum=True, write_content_size=True, write_dict_id=False
            )
            self._local.cctx = cctx
        return cctx

    def _dctx(self) -> Any:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor()
            self._local.dctx = dctx
        return dctx

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        """One complete zstd frame with content size and content checksum."""
        return bytes(self._cctx().compress(data))

    def zero_frame(self, length: int) -> bytes:
        """The zero frame for ``length`` zero bytes (``zero_frame``): whatever the level or library."""
        return zero_frame(length)

    def decompress(self, frame: bytes | memoryview, expected_size: int, chunk: int, offset: int,
                   where: str | None = None) -> bytes:
        """Decode one frame, checking its content checksum and size; raise ``ChunkCorruptError`` naming the
        chunk as ``where`` (default: its index and source offset)."""
        where = where or f"chunk {chunk} (source byte offset {offset})"
        try:
            # libzstd allocates a frame's declared content size whole, whatever max_output_size says: a
            # frame claiming 2**51 bytes was a MemoryError (fuzz input kept in fuzz/crashes/image)
            claimed = zstandard.get_frame_parameters(frame).content_size
            if claimed not in (zstandard.CONTENTSIZE_UNKNOWN, expected_size):
                raise ChunkCorruptError(f"{where} is corrupt: its frame declares {claimed} bytes, "
                                        f"expected {expected_size}", chunk, offset)
            data = self._dctx().decompress(frame, max_output_size=expected_size)
        except zstandard.ZstdError as e:
            raise ChunkCorruptError(
                f"{where} is corrupt: {e}", chunk, offset
            ) from None
        if len(data) != expected_size:
            raise ChunkCorruptError(
                f"{where} decodes to {len(data)} bytes, "
                f"expected {expected_size}", chunk, offset,
            )
        return bytes(data)

    def decompress_into(self, frame: bytes | memoryview, out: memoryview, chunk: int, offset: int,
                        where: str | None = None) -> None:
        """Decode one frame straight into ``out``, which it must fill exactly (no intermediate bytes
        object, no copy); the content checksum is checked at the frame's end.  Raise ``ChunkCorruptError``
        naming the chunk as ``where``."""
        where = where or f"chunk {chunk} (source byte offset {offset})"
        n = len(out)
        got = 0
        try:
            with self._dctx().stream_reader(frame, read_size=len(frame)) as reader:
                while got < n:
                    k = reader.readinto(out[got:])
                    if not k:
                        break
                    got += k
                extra = reader.read(1)  # reaching the frame's end checks its content checksum
        except zstandard.ZstdError as e:
            raise ChunkCorruptError(
                f"{where} is corrupt: {e}", chunk, offset
            ) from None
        if got != n or extra:
            raise ChunkCorruptError(
                f"{where} decodes to {got + len(extra)}+ bytes, expected {n}",
                chunk, offset,
            )

    def decompress_prefix(self, frame: bytes | memoryview, need: int, chunk: int, offset: int,
                          where: str | None = None) -> bytes:
        """The first ``need`` bytes of a frame, decoding no further than the block that holds them.

        The frame's content checksum covers all of it and is not checked here: callers check the
        frame's bytes first (the trailer's CRC-32 of every frame).  Raises ``ChunkCorruptError``."""
        where = where or f"chunk {chunk} (source byte offset {offset})"
        parts: list[bytes] = []
        got = 0
        try:
            with self._dctx().stream_reader(frame, read_size=len(frame)) as reader:
                while got < need:
                    part = reader.read(need - got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
        except zstandard.ZstdError as e:
            raise ChunkCorruptError(
                f"{where} is corrupt: {e}", chunk, offset
            ) from None
        if got < need:
            raise ChunkCorruptError(
                f"{where} decodes to {got} bytes, expected at least {need}",
                chunk, offset,
            )
        return parts[0] if len(parts) == 1 else b"".join(parts)


def frame_checksum(frame: bytes | memoryview) -> int:
    """A frame's Content_Checksum field (its last 4 bytes): low 32 bits of XXH64 of its content."""
    return int.from_bytes(bytes(frame[-4:]), "little")
