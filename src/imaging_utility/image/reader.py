"""Random-access reader of an image (single file or split parts) — a ``BlockSource``.

Opening checks the frame layout (``layout.load_layout``, spec §8).  Thread-safety: one
``ImageReader`` may be shared by many threads.  Reads are positional; decoded chunks go
through a lock-protected LRU cache; concurrent misses on the same chunk decode it once;
sequential readers trigger read-ahead of the next chunks on a small background pool.  Every
chunk is checked as it is decoded (its frame checksum against the seek table, its content
checksum and its size), so a corrupt chunk raises ``ChunkCorruptError`` and never returns
wrong bytes.  A chunk stored as the zero frame returns zeros only after its bytes compared
equal to the zero frame; any other frame is decoded.  The trailer's CRC-32 of the compressed
frame is checked by ``verify`` (``check_frame``) and before a prefix decode; a whole decode
does not need it to return right bytes.

A random read (the first touch of a chunk that does not follow the previous one)
of a chunk of 1 MiB or more decodes only the frame's blocks up to the bytes it
needs: on average about 60% of the work for a 1 MiB chunk.  Such a prefix cannot
be checked by the frame's content checksum (it covers the whole content), so the
frame's CRC-32 from the trailer is checked over the whole compressed frame first.
The next read of that chunk decodes it in full.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..blocks import check_range
from ..errors import ChunkCorruptError, CorruptImageError
from ..extents import Extent, ExtentKind, coalesce
from ..format.codec import Codec, frame_checksum, zero_checksum, zero_frame, zero_frame_length
from ..format.crc import crc32
from ..limits import DECODES
from ..storage import open_reader, resolve
from .layout import load_layout

DEFAULT_CACHE_BYTES = 64 << 20
# Below 1 MiB the CRC-32 of the whole frame costs what the prefix saves (measured per random 4 KiB read:
# 1M chunks 420 µs with prefixes, 450 µs without; 512K 235 both ways; 256K 155-190 against 130).
PREFIX_MIN_CHUNK = 1 << 20
ZSTD_BLOCK = 128 << 10
ZERO_RUN_READ = 1 << 20  # bytes of back-to-back zero frames compared per read


class ImageReader:
    def __init__(self, paths: list[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES, readahead: int = 4) -> None:
        self.paths = paths
        self._parts = open_reader(paths)
        try:
            layout = load_layout(self._parts)
        except BaseException:
            self._parts.close()
            raise
        self.header, self.trailer = layout.header, layout.trailer
        self.size = self.header.source_size
        self.chunk_size = self.header.chunk_size
        self.chunk_count = layout.chunk_count
        self._last_len = layout.last_len
        self.image_bytes, self.table_offset = layout.image_bytes, layout.table_offset
        self.chunk_offsets, self.chunk_csizes, self.chunk_sums = (
            layout.chunk_offsets, layout.chunk_csizes, layout.chunk_sums)
        self.frame_crcs = layout.frame_crcs
        self.bad_ranges = layout.bad_ranges
        self.allocation = layout.allocation
        self._codec = Codec()
        self._zero_data: dict[int, bytes] = {}  # length -> zeros, made on first use (up to 256 MiB)
        # per chunk: 0 not yet compared with the zero frame, 1 is the zero frame, 2 is not
        self._zero_state = bytearray(self.chunk_count)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_slots = max(2, cache_bytes // self.chunk_size)
        self._inflight: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._recent: list[int] = []
        self._readahead = readahead
        self._pool: ThreadPoolExecutor | None = None
        self._prefix_ok = self.chunk_size >= PREFIX_MIN_CHUNK

    # --- BlockSource ----------------------------------------------------------------
    @property
    def sector_size(self) -> int:
        return self.header.sector_size

    @property
    def metadata(self) -> dict[str, Any]:
        return {"header": self.header.meta, "trailer": self.trailer.meta}

    def is_zero_chunk(self, index: int) -> bool:
        """True when the seek table's entry for chunk ``index`` is the zero frame's (size and checksum).
        Only the frame's bytes prove it (``zero_chunk_checked``)."""
        n = self.chunk_len(index)
        return self.chunk_csizes[index] == zero_frame_length(n) and self.chunk_sums[index] == zero_checksum(n)

    def zero_chunk_checked(self, index: int) -> bool:
        """True when chunk ``index`` is stored as the zero frame, compared byte for byte (spec §2.1).
        A damaged zero frame answers False, so whoever then reads the chunk gets its error."""
        if not self._zero_state[index]:
            self._check_zero_frames(index, index)
        return self._zero_state[index] == 1

    def _check_zero_frames(self, first: int, last: int) -> None:
        """Compare the candidate zero frames of chunks ``first … last`` with the zero frame; frames that
        lie back to back (a long zero run) are read together."""
        i = first
        while i <= last:
            if self._zero_state[i]:
                i += 1
                continue
            if not self.is_zero_chunk(i):
                self._zero_state[i] = 2
                i += 1
                continue
            j = i  # extend over the following unchecked candidates stored right after it
            end = self.chunk_offsets[i] + self.chunk_csizes[i]
            while (j < last and not self._zero_state[j + 1] and self.chunk_offsets[j + 1] == end
                   and end - self.chunk_offsets[i] < ZERO_RUN_READ and self.is_zero_chunk(j + 1)):
                j += 1
                end += self.chunk_csizes[j]
            span = self._parts.read_at(self.chunk_offsets[i], end - self.chunk_offsets[i])
            if j < self.chunk_count - 1 and span == zero_frame(self.chunk_size) * (j - i + 1):
                self._zero_state[i : j + 1] = b"\1" * (j - i + 1)  # the common case: one compare for the run
                i = j + 1
                continue
            for k in range(i, j + 1):
                rel = self.chunk_offsets[k] - self.chunk_offsets[i]
                frame = span[rel : rel + self.chunk_csizes[k]]
                self._zero_state[k] = 1 if frame == zero_frame(self.chunk_len(k)) else 2
            i = j + 1

    def chunk_len(self, index: int) -> int:
        return self._last_len if index == self.chunk_count - 1 else self.chunk_size

    def read_frame(self, index: int) -> bytes:
        return self._parts.read_at(self.chunk_offsets[index], self.chunk_csizes[index])

    def decode_chunk(self, index: int, frame: bytes | None = None, need: int | None = None, *,
                     check_frame: bool = False) -> bytes:
        """Decode and check chunk ``index`` (bypassing the cache); with ``need``, possibly only a prefix
        of at least ``need`` bytes (when the trailer has frame CRCs).

        The content checksum proves the bytes returned are right.  ``check_frame`` (what ``verify`` asks)
        also checks the compressed frame against the trailer's CRC-32, which catches the flips that
        decode identically (zstd ignores some frame-header bits); a prefix decode always does."""
        n = self.chunk_len(index)
        offset = index * self.chunk_size
        if frame is None:
            frame = self.read_frame(index)
        partial = need is not None and need < n
        if (partial or check_frame) and crc32(frame) != self.frame_crcs[index]:
            raise ChunkCorruptError(f"{self.where(index)}: its frame's bytes fail their CRC-32 check", index, offset)
        if frame_checksum(frame) != self.chunk_sums[index]:
            raise ChunkCorruptError(
                f"{self.where(index)}: frame checksum {frame_checksum(frame):#010x} "
                f"differs from the seek table's {self.chunk_sums[index]:#010x}", index, offset,
            )
        if len(frame) == zero_frame_length(n) and frame == zero_frame(n):
            zeros = self._zero_data.get(n)
            return zeros if zeros is not None else self._zero_data.setdefault(n, bytes(n))
        if partial:
            assert need is not None
            return self._codec.decompress_prefix(frame, need, index, offset, self.where(index))
        return self._codec.decompress(frame, n, index, offset, self.where(index))

    def where(self, index: int) -> str:
        """Chunk ``index`` named by its source bytes and where its frame lies in the image file(s)."""
        start = index * self.chunk_size
        path, rel = self._parts.locate(self.chunk_offsets[index])
        return (f"chunk {index} (source bytes {start}-{start + self.chunk_len(index) - 1}; "
                f"its frame at byte {rel} of {path})")

    def chunk(self, index: int, need: int | None = None) -> bytes:
        """Chunk ``index``'s bytes, through the cache (thread-safe).  With ``need``, a prefix of at least
        ``need`` bytes may come back instead of the whole chunk."""
        want = self.chunk_len(index) if need is None else need
        while True:
            with self._lock:
                data = self._cache.get(index)
                if data is not None and len(data) >= want:
                    self._cache.move_to_end(index)
                    return data
                pending = self._inflight.get(index)
                if pending is None:
                    pending = self._inflight[index] = _Pending()
                    break
            pending.wait()
            if pending.error is not None:
                raise pending.error
            if len(pending.data) >= want:
                return pending.data
            # another thread decoded a shorter prefix: try again (and decode it ourselves)
        try:
            with DECODES.hold(want):
                data = self.decode_chunk(index, need=need)
        except BaseException as e:
            with self._lock:
                del self._inflight[index]
            pending.finish(b"", e)
            raise
        with self._lock:
            del self._inflight[index]
            if data is not self._zero_data.get(len(data)):
                old = self._cache.get(index)
                if old is None or len(old) < len(data):
                    self._cache[index] = data
                    self._cache.move_to_end(index)
                if len(self._cache) > self._cache_slots:
                    self._cache.popitem(last=False)
        pending.finish(data, None)
        return data

    def _decode_into(self, index: int, out: memoryview) -> bool:
        """Decode chunk ``index`` straight into ``out`` (the whole chunk) unless it is cached or being
        decoded: a reader of whole chunks (export, large NBD reads) skips the cache and two copies.
        Checked like ``decode_chunk``; False when the cache path should serve it."""
        with self._lock:
            if index in self._cache or index in self._inflight:
                return False
        frame = self.read_frame(index)
        offset = index * self.chunk_size
        if frame_checksum(frame) != self.chunk_sums[index]:
            raise ChunkCorruptError(
                f"{self.where(index)}: frame checksum {frame_checksum(frame):#010x} "
                f"differs from the seek table's {self.chunk_sums[index]:#010x}", index, offset,
            )
        n = len(out)
        if len(frame) == zero_frame_length(n) and frame == zero_frame(n):  # byte for byte (spec §2.1)
            zeros = self._zero_data.get(n)
            out[:] = zeros if zeros is not None else self._zero_data.setdefault(n, bytes(n))
        else:
            self._codec.decompress_into(frame, out, index, offset, self.where(index))
        return True

    def _note_access(self, index: int) -> bool:
        """Record an access; True when it continues a sequential read (or re-reads the last chunks)."""
        with self._lock:
            follows = index - 1 in self._recent
            sequential = follows or index in self._recent
            self._recent.append(index)
            del self._recent[:-16]
            if not follows or not self._readahead:
                return sequential
            # as many chunks ahead as the run has read so far (up to the limit): a client reading two
            # chunks in a row over a remote store does not pay for four more
            run = 2
            while run <= self._readahead and index - run in self._recent:
                run += 1
            todo = [j for j in range(index + 1, min(index + run, self.chunk_count))
                    if j not in self._cache and j not in self._inflight]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="readahead")
        for j in todo:
            self._pool.submit(self._prefetch, j)
        return True

    def _prefetch(self, index: int) -> None:
        try:
            self.chunk(index)
        except (CorruptImageError, OSError):
            pass  # reported to whoever reads it for real

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self.size, offset, len(buf))
        view = memoryview(buf)
        pos = 0
        while pos < len(view):
            index, rel = divmod(offset + pos, self.chunk_size)
            take = min(len(view) - pos, self.chunk_len(index) - rel)
            need = None
            if not self._note_access(index) and self._prefix_ok:
                need = min(self.chunk_len(index), -(-(rel + take) // ZSTD_BLOCK) * ZSTD_BLOCK)
            if rel == 0 and take == self.chunk_len(index) and self._decode_into(index, view[pos : pos + take]):
                pos += take
                continue
            data = self.chunk(index, need)
            view[pos : pos + take] = memoryview(data)[rel : rel + take]
            pos += take

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the image)."""
        n = max(0, min(n, self.size - offset))
        buf = bytearray(n)
        self.readinto_at(offset, buf)
        return bytes(buf)

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self.size, offset, length)
        if not length:
            return []
        first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
        if first == last and self.allocation is None and not self.bad_ranges:  # the common small read
            return [Extent(offset, length, ExtentKind.ZERO if self.zero_chunk_checked(first) else ExtentKind.DATA)]
        self._check_zero_frames(first, last)
        out: list[Extent] = []
        for i in range(first, last + 1):
            s = max(offset, i * self.chunk_size)
            e = min(offset + length, i * self.chunk_size + self.chunk_len(i))
            kind = ExtentKind.ZERO if self.zero_chunk_checked(i) else ExtentKind.DATA
            if self.allocation is None:
                out.append(Extent(s, e - s, kind))
                continue
            pos = s
            for uo, un in self.allocation.used_in(s, e - s):
                if uo > pos:
                    out.append(Extent(pos, uo - pos, ExtentKind.UNALLOCATED))
                out.append(Extent(uo, un, kind))
                pos = uo + un
            if pos < e:
                out.append(Extent(pos, e - pos, ExtentKind.UNALLOCATED))
        return _overlay_bad(coalesce(out), self.bad_ranges)

    def chunk_map(self) -> list[Extent]:
        """The whole image as data / zero / unallocated / unreadable extents."""
        return self.extents(0, self.size)

    def verify(self, **kwargs: Any) -> Any:
        from .verify import verify_image

        return verify_image(self, **kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._parts.close()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pending:
    """A chunk being decoded by one thread; others ``wait()`` for it.  Lighter than a ``Future``."""

    __slots__ = ("_done", "data", "error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.data = b""
        self.error: BaseException | None = None

    def finish(self, data: bytes, error: BaseException | None) -> None:
        self.data, self.error = data, error
        self._done.release()

    def wait(self) -> None:
        with self._done:
            pass


def _overlay_bad(extents: list[Extent], bad: list[tuple[int, int]]) -> list[Extent]:
    if not bad:
        return extents
    out: list[Extent] = []
    for ext in extents:
        pos = ext.offset
        for bo, bn in bad:
            s, e = max(bo, pos), min(bo + bn, ext.end)
            if s >= e:
                continue
            if s > pos:
                out.append(Extent(pos, s - pos, ext.kind))
            out.append(Extent(s, e - s, ExtentKind.UNREADABLE))
            pos = e
        if pos < ext.end:
            out.append(Extent(pos, ext.end - pos, ext.kind))
    return coalesce(out)


def open_image(path: str, **kwargs: Any) -> ImageReader:
    """Open a finished image (a file, ``NAME.001`` or ``NAME`` of a split set, or the same as
    ``s3://bucket/key``) for random access."""
    return ImageReader(resolve(path), **kwargs)
