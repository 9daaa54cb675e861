"""NTFS files compressed by WOF, the Windows Overlay Filter (Windows 10/11 "CompactOS", ``compact /exe``).

Such a file has a reparse point tagged ``IO_REPARSE_TAG_WOF`` whose data is ``WOF_EXTERNAL_INFO``
(version 1, provider 2 = file) and ``FILE_PROVIDER_EXTERNAL_INFO_V1`` (version 1, algorithm: 0
XPRESS 4 KiB chunks, 1 LZX 32 KiB, 2 XPRESS 8 KiB, 3 XPRESS 16 KiB); a sparse unnamed stream whose size
is the file's; and the stream ``WofCompressedData``: a table of ``chunks − 1`` little-endian offsets
(4 bytes each, 8 when the file is over 4 GiB), each where a chunk after the first starts, counted from
the table's end, then the chunks.  Every chunk decodes to a whole chunk size (the last to what is left);
one stored at that full size is stored as is.  Sources: Microsoft's ``wofapi.h`` (the structures) and
Eric Biggers' ntfs-3g system-compression plugin (``system_compression.c``), whose reader this follows.

The sizes are claims.  The file's size is capped by what the stream can hold (every chunk takes at
least one byte), each chunk's span is checked against its neighbours and the stream before it is read,
and a stored chunk is at most one chunk size: a reader holds one table window and one chunk, whatever
the file claims.  WIMBoot files (provider 1) keep their data in a WIM file outside the volume; they,
and any version or algorithm not listed above, are not read (``parse`` says why in one line).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptImageError
from . import wof_lzx, wof_xpress
from .tree_stream import Seekable

TAG_WOF = 0x80000017
STREAM = "WofCompressedData"
PROVIDER_WIM, PROVIDER_FILE = 1, 2
_ALGORITHMS = {0: ("XPRESS4K", 12), 1: ("LZX", 15), 2: ("XPRESS8K", 13), 3: ("XPRESS16K", 14)}
_INFO = struct.Struct("<4I")
_TABLE_WINDOW = 1024  # offsets read at a time


@dataclass(frozen=True, slots=True)
class Wof:
    algorithm: str
    chunk_order: int

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_order


def parse(buffer: bytes) -> Wof | str:
    """What a WOF reparse point's data (after the 8-byte reparse header) says: the compression, or the
    one-line reason the file's data cannot be read from this volume."""
    if len(buffer) < 8:
        return f"a WOF reparse point of {len(buffer)} bytes is too short to name its provider"
    version, provider = struct.unpack_from("<2I", buffer)
    if provider == PROVIDER_WIM:
        return "WIMBoot file: its data is in a WIM file outside this volume"
    if version != 1 or provider != PROVIDER_FILE:
        return f"WOF provider {provider} (version {version}) is not one this program reads"
    if len(buffer) < _INFO.size:
        return f"a WOF reparse point of {len(buffer)} bytes is too short to name its compression"
    _, _, file_version, algorithm = _INFO.unpack_from(buffer)
    if file_version != 1 or algorithm not in _ALGORITHMS:
        return f"WOF compression {algorithm} (version {file_version}) is not one this program reads"
    name, order = _ALGORITHMS[algorithm]
    return Wof(name, order)


ReadAt = Callable[[int, int], bytes]  # (offset, length) of the compressed stream → exactly that many bytes


class WofFile(Seekable):
    """The decompressed data of a WOF file, seekable; reads decode only the chunks they touch."""

    def __init__(self, wof: Wof, size: int, stored: int, read_at: ReadAt, label: str) -> None:
        super().__init__(size)
        self.wof = wof
        self._stored = stored
        self._read_at = read_at
        self._label = label
        cs = wof.chunk_size
        self._chunks = -(-size // cs)
        self._entry = 4 if size <= 0xFFFFFFFF else 8
        self._table = max(0, self._chunks - 1) * self._entry
        if self._table + self._chunks > stored:
            raise CorruptImageError(f"{label}: {size} bytes in {self._chunks} chunks cannot fit in its "
                                    f"{stored}-byte {STREAM} stream")
        self._window_first = -1  # index of the first offset in _offsets
        self._offsets: list[int] = []
        self._cached = -1
        self._chunk = b""

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        done = 0
        cs = self.wof.chunk_size
        while done < want:
            index, rel = divmod(self._pos, cs)
            chunk = self._decoded(index)
            take = min(want - done, len(chunk) - rel)
            view[done : done + take] = chunk[rel : rel + take]
            done += take
            self._pos += take
        return done

    # --- chunks ---------------------------------------------------------------------------------------
    def _offset(self, index: int) -> int:
        """Where chunk ``index`` starts in the stream (``index == chunks``: the stream's end)."""
        if index == 0:
            return self._table
        if index == self._chunks:
            return self._stored
        if not self._window_first <= index - 1 < self._window_first + len(self._offsets):
            first = index - 1
            count = min(_TABLE_WINDOW, self._chunks - 1 - first)
            raw = self._read_at(first * self._entry, count * self._entry)
            self._offsets = list(struct.unpack(f"<{count}{'I' if self._entry == 4 else 'Q'}", raw))
            self._window_first = first
        return self._table + self._offsets[index - 1 - self._window_first]

    def _decoded(self, index: int) -> bytes:
        if index == self._cached:
            return self._chunk
        cs = self.wof.chunk_size
        size = cs if index < self._chunks - 1 else self.size - index * cs
        start, end = self._offset(index), self._offset(index + 1)
        what = f"{self._label}: WOF {self.wof.algorithm} chunk {index}"
        if not self._table <= start < end <= self._stored or end - start > size:
            raise CorruptImageError(f"{what} claims bytes {start}..{end} of its {self._stored}-byte stream "
                                    f"for {size} bytes of data")
        data = self._read_at(start, end - start)
        if end - start == size:
            chunk = data
        elif self.wof.algorithm == "LZX":
            chunk = wof_lzx.decompress(data, size, what)
        else:
            chunk = wof_xpress.decompress(data, size, what)
        self._cached, self._chunk = index, chunk
        return chunk
