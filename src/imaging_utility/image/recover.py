"""Continue a partial image: keep the longest valid prefix and rebuild the digest state from it.

Where the store can read the partial image back (files), walks the frames from
the start (docs/image-format.md §8), decodes every kept data frame (checking its
content checksum and size) and feeds the digests in order — the source is not
read again.  Everything from the first incomplete or invalid frame onward,
including an old trailer and seek table, is dropped.  Where it cannot (an
unfinished S3 upload), the image is made again from its stored header on and
the store keeps what it already holds (``storage.base.Partial.replay``).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import interrupts
from ..errors import ChunkCorruptError, CorruptImageError, ResumeMismatchError
from ..extents import AllocationMap
from ..format import c_image as c
from ..format.codec import Codec
from ..format.crc import crc32
from ..format.index import SeekTable, walk_frames
from ..format.metaframe import Event, Header, starts_like_image
from ..limits import threads_within
from ..storage import BlobReader, Partial
from .digests import Digests
from .writer import ImageWriter


@dataclass
class Recovered:
    header: Header
    writer: ImageWriter
    digests: Digests
    chunks_done: int
    bytes_kept: int
    bytes_dropped: int
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)


def read_header(partial: Partial) -> Header | None:
    """The header of the partial image ``partial``; None when not even the header was written completely."""
    head, first = partial.head, partial.name
    if not starts_like_image(head):
        shown = f" (magic {int.from_bytes(head[:4], 'little'):#010x})" if len(head) >= c.SKIPPABLE_HEADER.size else ""
        raise ResumeMismatchError(f"{first} is not an imaging-utility image{shown}; refusing to continue it")
    if len(head) < c.SKIPPABLE_HEADER.size:
        return None  # nothing, or cut inside the magic or the size field
    size = c.SKIPPABLE_HEADER.unpack(head[: c.SKIPPABLE_HEADER.size])[1]
    if len(head) < c.SKIPPABLE_HEADER.size + size:
        return None
    try:
        return Header.decode(head[c.SKIPPABLE_HEADER.size :], c.SKIPPABLE_HEADER.size)
    except CorruptImageError as e:
        raise ResumeMismatchError(f"cannot continue {first}: {e}") from None


def recover(
    partial: Partial,
    header: Header,
    digest_names: tuple[str, ...],
    codec: Codec,
    threads: int,
    progress: Callable[[int], None] | None = None,
    observer: Any = None,
) -> Recovered:
    """Open the partial image ``partial`` (whose header is ``header``) for appending.

    ``observer.update(data, offset)``, when given, sees every kept chunk in order (as capture's does)."""
    if partial.reader is None:
        sink = partial.replay()
        sink.write_frame(partial.head)
        table = SeekTable()
        table.append(len(partial.head), 0, c.XXH64_EMPTY_LOW32)
        writer = ImageWriter(sink, header, table, array("I"))
        return Recovered(header, writer, Digests(digest_names), 0, 0, 0)
    return _recover(partial, partial.reader, header, digest_names, codec, threads, progress, observer)


def _recover(
    partial: Partial,
    reader: BlobReader,
    header: Header,
    digest_names: tuple[str, ...],
    codec: Codec,
    threads: int,
    progress: Callable[[int], None] | None,
    observer: Any,
) -> Recovered:
    frames = walk_frames(reader.read_at, reader.size)
    first = next(frames)
    table = SeekTable()
    table.append(first.length, 0, c.XXH64_EMPTY_LOW32)
    chunk_size, size = header.chunk_size, header.source_size
    n_chunks = -(-size // chunk_size)
    threads = threads_within(threads, chunk_size)
    digests = Digests(digest_names)
    allocation = (AllocationMap.decode(header.allocation, size)
                  if header.used_only and header.allocation is not None else None)
    bad: list[tuple[int, int]] = []
    kept = first.length
    chunk = 0
    last_event = -1

    def decode(off: int, length: int, expected: int, index: int) -> tuple[bytes, int]:
        frame = reader.read_at(off, length)
        return codec.decompress(frame, expected, index, index * chunk_size), crc32(frame)

    crcs: array[int] = array("I")
    pending: deque[tuple[Future[tuple[bytes, int]], int, int, int]] = deque()

    def drain(limit: int) -> bool:
        nonlocal kept, chunk
        while len(pending) > limit:
            fut, length, dsize, checksum = pending.popleft()
            try:
                data, crc = fut.result()
            except ChunkCorruptError:
                pending.clear()
                return False
            digests.update_chunk(data, chunk * chunk_size, allocation)
            if observer is not None:
                observer.update(data, chunk * chunk_size)
            table.append(length, dsize, checksum)
            crcs.append(crc)
            kept += length
            chunk += 1
            if progress:
                progress(chunk * chunk_size)
        return True

    ok = True
    # signals are taken between chunks (interrupts.py), never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(max(1, threads), thread_name_prefix="recover") as pool:
        for fr in frames:
            interrupts.check()
            if fr.magic == c.ZSTD_MAGIC:
                index = chunk + len(pending)
                expected = min(chunk_size, size - index * chunk_size)
                if index >= n_chunks or fr.content_size != expected or fr.checksum is None:
                    break
                pending.append((pool.submit(decode, fr.offset, fr.length, expected, index),
                                fr.length, expected, fr.checksum))
                if not drain(2 * threads + 2):
                    ok = False
                    break
            elif fr.magic == c.EVENT_MAGIC:
                if not drain(0):
                    ok = False
                    break
                try:
                    event = Event.decode(reader.read_at(fr.offset + 8, fr.length - 8), fr.offset)
                    event.check_chunk(chunk_size, size)
                except CorruptImageError:
                    break
                if event.chunk_index != chunk - 1 or event.chunk_index == last_event:
                    break
                last_event = event.chunk_index
                bad.extend(event.bad_ranges)
                table.append(fr.length, 0, c.XXH64_EMPTY_LOW32)
                kept += fr.length
            else:  # trailer, seek table or anything else: rewrite from here
                break
        if ok:
            drain(0)
        for fut, *_ in pending:
            fut.cancel()

    parts = partial.continue_at(kept)
    writer = ImageWriter(parts, header, table, crcs)
    return Recovered(header, writer, digests, chunk, kept, reader.size - kept, bad)
