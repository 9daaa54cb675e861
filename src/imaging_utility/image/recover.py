"""Continue a partial image: keep the longest valid prefix and rebuild the digest state from it.

Walks the frames from the start (docs/image-format.md §8), decodes every kept
data frame (checking its content checksum and size) and feeds the digests in
order — the source is not read again.  Everything from the first incomplete or
invalid frame onward, including an old trailer and seek table, is dropped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import ChunkCorruptError, CorruptImageError, ResumeMismatchError
from ..extents import AllocationMap
from ..format import c_image as c
from ..format.codec import Codec
from ..format.index import SeekTable, walk_frames
from ..format.metaframe import Event, Header
from .destlock import DestLock
from .digests import Digests
from .parts import PartReader, PartWriter, existing_outputs, part_path
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


def read_header(dest: str, split: bool) -> Header | None:
    """The header of the partial image at ``dest``; None when not even the header was written completely."""
    first = part_path(dest, 0) if split else dest
    try:
        with open(first, "rb") as fh:
            head = fh.read(c.SKIPPABLE_HEADER.size)
            if len(head) < c.SKIPPABLE_HEADER.size:
                magic = c.SKIPPABLE_HEADER.pack(c.HEADER_MAGIC, 0)[:4]
                if magic[: len(head)] == head[:4]:  # cut inside the magic or the size field
                    return None
                raise ResumeMismatchError(f"{first} is not an imaging-utility image; refusing to continue it")
            magic, size = c.SKIPPABLE_HEADER.unpack(head)
            if magic != c.HEADER_MAGIC:
                raise ResumeMismatchError(
                    f"{first} is not an imaging-utility image (magic {magic:#010x}); refusing to continue it"
                )
            body = fh.read(size)
    except FileNotFoundError:
        return None
    if len(body) < size:
        return None
    try:
        return Header.decode(body, c.SKIPPABLE_HEADER.size)
    except CorruptImageError as e:
        raise ResumeMismatchError(f"cannot continue {first}: {e}") from None


def recover(
    dest: str,
    header: Header,
    split_size: int | None,
    digest_names: tuple[str, ...],
    codec: Codec,
    threads: int,
    progress: Callable[[int], None] | None = None,
    lock: DestLock | None = None,
) -> Recovered:
    """Open the partial image at ``dest`` (whose header equals ``header``) for appending."""
    paths = [p for p in existing_outputs(dest) if split_size is None or p != dest]
    reader = PartReader(paths)
    try:
        return _recover(reader, dest, header, split_size, digest_names, codec, threads, progress, lock)
    finally:
        reader.close()


def _recover(
    reader: PartReader,
    dest: str,
    header: Header,
    split_size: int | None,
    digest_names: tuple[str, ...],
    codec: Codec,
    threads: int,
    progress: Callable[[int], None] | None,
    lock: DestLock | None,
) -> Recovered:
    frames = walk_frames(reader.read_at, reader.size)
    first = next(frames)
    table = SeekTable()
    table.append(first.length, 0, c.XXH64_EMPTY_LOW32)
    chunk_size, size = header.chunk_size, header.source_size
    n_chunks = -(-size // chunk_size)
    digests = Digests(digest_names)
    allocation = (AllocationMap.decode(header.allocation, size)
                  if header.used_only and header.allocation is not None else None)
    bad: list[tuple[int, int]] = []
    kept = first.length
    chunk = 0
    last_event = -1

    def decode(off: int, length: int, expected: int, index: int) -> tuple[bytes, int]:
        frame = reader.read_at(off, length)
        return codec.decompress(frame, expected, index, index * chunk_size), zlib.crc32(frame)

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
            table.append(length, dsize, checksum)
            crcs.append(crc)
            kept += length
            chunk += 1
            if progress:
                progress(chunk * chunk_size)
        return True

    ok = True
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="recover") as pool:
        for fr in frames:
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

    part_sizes = PartWriter.sizes(reader.paths)
    parts = PartWriter(dest, split_size, lock)
    parts.reopen_at(kept, part_sizes)
    writer = ImageWriter(parts, header, table, crcs)
    return Recovered(header, writer, digests, chunk, kept, reader.size - kept, bad)


def remove_outputs(dest: str) -> threading.Thread | None:
    """Remove an old image at ``dest`` (``--force``).  The files are renamed out of the way at once and
    unlinked on a background thread (freeing a large file's blocks takes a while); join the thread."""
    doomed = []
    for i, p in enumerate(existing_outputs(dest)):
        tmp = os.path.join(os.path.dirname(p) or ".", f".{os.path.basename(dest)}.{os.getpid()}.{i}.discard")
        os.rename(p, tmp)
        doomed.append(tmp)
    if not doomed:
        return None

    def unlink_all() -> None:
        for p in doomed:
            with contextlib.suppress(OSError):
                os.unlink(p)

    thread = threading.Thread(target=unlink_all, name="discard-old-image", daemon=True)
    thread.start()
    return thread
