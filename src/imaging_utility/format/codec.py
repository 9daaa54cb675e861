"""zstd frame encode/decode; the only module that imports ``zstandard``.

Thread-safety: ``Codec`` is safe to share between threads — it keeps one
compressor and one decompressor per thread (zstandard objects are not thread
safe).  ``compress``/``decompress`` release the GIL inside libzstd.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

from ..errors import ChunkCorruptError


def zstd_library_version() -> str:
    return str(zstandard.ZSTD_VERSION if isinstance(zstandard.ZSTD_VERSION, str) else
               ".".join(map(str, zstandard.ZSTD_VERSION)))


class Codec:
    def __init__(self, level: int) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level {level} out of range 1..22")
        self.level = level
        self._local = threading.local()
        self._zero_frames: dict[int, bytes] = {}
        self._lock = threading.Lock()

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
        """The frame for ``length`` zero bytes; computed once per length, identical every time."""
        frame = self._zero_frames.get(length)
        if frame is None:
            frame = self.compress(bytes(length))
            with self._lock:
                self._zero_frames[length] = frame
        return frame

    def decompress(self, frame: bytes | memoryview, expected_size: int, chunk: int, offset: int,
                   where: str | None = None) -> bytes:
        """Decode one frame, checking its content checksum and size; raise ``ChunkCorruptError`` naming the
        chunk as ``where`` (default: its index and source offset)."""
        where = where or f"chunk {chunk} (source byte offset {offset})"
        try:
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
