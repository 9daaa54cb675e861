"""Random-access reader of an image (single file or split parts) — a ``BlockSource``.

Thread-safety: one ``ImageReader`` may be shared by many threads.  Reads are
positional; decoded chunks go through a lock-protected LRU cache; concurrent
misses on the same chunk decode it once; sequential readers trigger read-ahead
of the next chunks on a small background pool.  Every chunk is checked as it
is decoded (its frame checksum against the seek table, its content checksum and
its size), so a corrupt chunk raises ``ChunkCorruptError`` and never returns
wrong bytes.  The trailer's CRC-32 of the compressed frame is checked by
``verify`` (``check_frame``) and before a prefix decode; a whole decode does not
need it to return right bytes.

A random read (the first touch of a chunk that does not follow the previous one)
of a chunk of 1 MiB or more decodes only the frame's blocks up to the bytes it
needs: on average about 60% of the work for a 1 MiB chunk.  Such a prefix cannot
be checked by the frame's content checksum (it covers the whole content), so it
is only done when the trailer holds the CRC-32 of every frame, which is checked
over the whole compressed frame first.  The next read of that chunk decodes it
in full.
"""

from __future__ import annotations

import itertools
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..blocks import check_range
from ..errors import ChunkCorruptError, CorruptImageError, IncompleteImageError
from ..extents import AllocationMap, Extent, ExtentKind, coalesce
from ..format import c_image as c
from ..format.codec import Codec, frame_checksum
from ..format.index import SeekTable
from ..format.metaframe import Event, Header, Trailer
from ..storage import open_reader, resolve

DEFAULT_CACHE_BYTES = 64 << 20
# Below 1 MiB the CRC-32 of the whole frame costs what the prefix saves (measured per random 4 KiB read:
# 1M chunks 420 µs with prefixes, 450 µs without; 512K 235 both ways; 256K 155-190 against 130).
PREFIX_MIN_CHUNK = 1 << 20
ZSTD_BLOCK = 128 << 10


class ImageReader:
    def __init__(self, paths: list[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES, readahead: int = 4) -> None:
        self.paths = paths
        self._parts = open_reader(paths)
        try:
            self._load()
        except IncompleteImageError:
            self._parts.close()
            if len(paths) < 2:
                raise
            raise IncompleteImageError(
                f"no seek table at the end of the last part {paths[-1]}: the capture was interrupted (continue it "
                f"with 'image --resume'), or the parts after it ({_next_part(paths[-1])} ...) are missing"
            ) from None
        except BaseException:
            self._parts.close()
            raise
        self._codec = Codec(int(self.header.meta.get("level", c.DEFAULT_LEVEL)))
        self._zero_frames = {n: self._codec.zero_frame(n) for n in {self.chunk_size, self._last_len}}
        self._zero_sums = {n: frame_checksum(f) for n, f in self._zero_frames.items()}
        self._zero_data = {n: bytes(n) for n in self._zero_frames}
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_slots = max(2, cache_bytes // self.chunk_size)
        self._inflight: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._recent: list[int] = []
        self._readahead = readahead
        self._pool: ThreadPoolExecutor | None = None
        self._prefix_ok = self.frame_crcs is not None and self.chunk_size >= PREFIX_MIN_CHUNK

    # --- loading and validation ---------------------------------------------------------
    def _load(self) -> None:
        read_at, file_size = self._parts.read_at, self._parts.size
        table, table_off = SeekTable.load(read_at, file_size)
        self.image_bytes = file_size
        if len(table) < 2 or table.dsizes[0] != 0 or table.checksums[0] != c.XXH64_EMPTY_LOW32:
            raise CorruptImageError("seek table does not start with the image header frame")
        offsets = array("Q", itertools.accumulate(table.csizes, initial=0))
        magic, hsize = c.SKIPPABLE_HEADER.unpack(read_at(0, c.SKIPPABLE_HEADER.size))
        if magic != c.HEADER_MAGIC:
            raise CorruptImageError(f"not an imaging-utility image: first frame magic {magic:#010x}")
        if hsize + 8 != table.csizes[0]:
            raise CorruptImageError(f"header frame size {hsize + 8} disagrees with the seek table ({table.csizes[0]})")
        self.header = Header.decode(read_at(8, hsize), 8)
        self.size = self.header.source_size
        self.chunk_size = self.header.chunk_size
        self.chunk_count = -(-self.size // self.chunk_size)
        self._last_len = self.size - (self.chunk_count - 1) * self.chunk_size if self.chunk_count else self.chunk_size
        self.chunk_offsets = array("Q")
        self.chunk_csizes = array("I")
        self.chunk_sums = array("I")
        self.trailer: Trailer | None = None
        event_ranges: list[tuple[int, int]] = []
        for i in range(1, len(table)):
            dsize, off, csize = table.dsizes[i], offsets[i], table.csizes[i]
            if dsize:
                k = len(self.chunk_offsets)
                expected = min(self.chunk_size, self.size - k * self.chunk_size)
                if k >= self.chunk_count or dsize != expected:
                    raise CorruptImageError(
                        f"seek table entry {i}: chunk {k} holds {dsize} bytes, expected {max(expected, 0)}"
                    )
                self.chunk_offsets.append(off)
                self.chunk_csizes.append(csize)
                self.chunk_sums.append(table.checksums[i])
                continue
            if csize < 8 or table.checksums[i] != c.XXH64_EMPTY_LOW32:
                raise CorruptImageError(
                    f"seek table entry {i}: skippable frame of {csize} bytes at offset {off:#x} "
                    f"with checksum {table.checksums[i]:#010x} (expected {c.XXH64_EMPTY_LOW32:#010x})"
                )
            fmagic, fsize = c.SKIPPABLE_HEADER.unpack(read_at(off, 8))
            if fmagic & c.SKIPPABLE_MASK != c.SKIPPABLE_BASE or fsize + 8 != csize:
                raise CorruptImageError(f"frame {i} at offset {off:#x} is not the skippable frame the seek table says")
            if fmagic == c.TRAILER_MAGIC:
                self.trailer = Trailer.decode(read_at(off + 8, fsize), off + 8)
            elif fmagic == c.EVENT_MAGIC:
                event_ranges.extend(Event.decode(read_at(off + 8, fsize), off + 8).bad_ranges)
        if len(self.chunk_offsets) != self.chunk_count:
            raise CorruptImageError(
                f"seek table lists {len(self.chunk_offsets)} chunks, the header's size needs {self.chunk_count}"
            )
        if self.trailer is None:
            raise CorruptImageError("image has no trailer frame")
        if self.trailer.source_size != self.size or self.trailer.chunk_count != self.chunk_count:
            raise CorruptImageError("trailer disagrees with the header about the image size")
        self.frame_crcs: array[int] | None = None
        if self.trailer.frame_crcs is not None:
            self.frame_crcs = array("I", self.trailer.frame_crcs)
            if sys.byteorder == "big":
                self.frame_crcs.byteswap()
        self.table_offset = table_off
        self.bad_ranges: list[tuple[int, int]] = self.trailer.bad_ranges or sorted(event_ranges)
        self.allocation: AllocationMap | None = None
        if self.header.used_only:
            if self.header.allocation is None:
                raise CorruptImageError("used-only image without an allocation map")
            try:
                self.allocation = AllocationMap.decode(self.header.allocation, self.size)
            except ValueError as e:
                raise CorruptImageError(f"image header: {e}") from None

    # --- BlockSource ----------------------------------------------------------------
    @property
    def sector_size(self) -> int:
        return self.header.sector_size

    @property
    def metadata(self) -> dict[str, Any]:
        return {"header": self.header.meta, "trailer": self.trailer.meta if self.trailer else {}}

    def is_zero_chunk(self, index: int) -> bool:
        """True when the seek table says chunk ``index`` is the precomputed all-zero frame."""
        n = self.chunk_len(index)
        return self.chunk_csizes[index] == len(self._zero_frames[n]) and self.chunk_sums[index] == self._zero_sums[n]

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
        partial = need is not None and self.frame_crcs is not None and need < n
        if (partial or check_frame) and self.frame_crcs is not None and zlib.crc32(frame) != self.frame_crcs[index]:
            raise ChunkCorruptError(f"{self.where(index)}: its frame's bytes fail their CRC-32 check", index, offset)
        if frame_checksum(frame) != self.chunk_sums[index]:
            raise ChunkCorruptError(
                f"{self.where(index)}: frame checksum {frame_checksum(frame):#010x} "
                f"differs from the seek table's {self.chunk_sums[index]:#010x}", index, offset,
            )
        if frame == self._zero_frames[n]:
            return self._zero_data[n]
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
        if frame == self._zero_frames[len(out)]:
            out[:] = self._zero_data[len(out)]
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
            return [Extent(offset, length, ExtentKind.ZERO if self.is_zero_chunk(first) else ExtentKind.DATA)]
        out: list[Extent] = []
        for i in range(first, last + 1):
            s = max(offset, i * self.chunk_size)
            e = min(offset + length, i * self.chunk_size + self.chunk_len(i))
            kind = ExtentKind.ZERO if self.is_zero_chunk(i) else ExtentKind.DATA
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


def _next_part(path: str) -> str:
    stem, _, number = path.rpartition(".")
    return f"{stem}.{int(number) + 1:03d}" if number.isdigit() else f"{path}.next"


def open_image(path: str, **kwargs: Any) -> ImageReader:
    """Open a finished image (a file, ``NAME.001`` or ``NAME`` of a split set, or the same as
    ``s3://bucket/key``) for random access."""
    return ImageReader(resolve(path), **kwargs)
