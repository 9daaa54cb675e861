"""How a capture reads its source: plainly, or like GNU ddrescue (``--rescue``), optionally throttled."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..blocks import BlockSource
from ..devices.mounts import mount_state
from ..devices.rescue import RescueReader
from ..devices.source import FileSource
from ..devices.throttle import Throttle
from ..errors import SourceIOError
from ..extents import AllocationMap
from .capture import ChunkReader

#: Used-only reads skip free space, which defeats the kernel's sequential read-ahead; so the used ranges
#: this far ahead are announced (``POSIX_FADV_WILLNEED``), in steps of ``PREFETCH_STEP``.
PREFETCH_AHEAD = 16 << 20
PREFETCH_STEP = 4 << 20


def read_direct_when_safe(source: FileSource, path: str) -> bool:
    """Let the capture of block device ``path`` read its large ranges with ``O_DIRECT``
    (``FileSource.read_large_direct``) unless something has it mounted read-write: a live filesystem's
    newest data may then be in the page cache only.  Whether it was turned on."""
    if source.direct or not source.is_block_device:
        return False
    if any(not m.read_only for m in mount_state(path).mounts):
        return False
    return source.read_large_direct()


def chunk_reader(source: BlockSource, label: str, rescue: bool, retries: int,
                 throttle: Throttle | None, allocation: AllocationMap | None = None,
                 chunk_size: int = 0) -> ChunkReader:
    """A ``ChunkReader`` over ``source`` (named ``label`` in errors).

    Without ``rescue`` the first unreadable sector stops the capture with ``SourceIOError`` naming it;
    with it, unreadable ranges are retried ``retries`` times, zero-filled and returned.  With the used-only
    ``allocation`` of a buffered ``FileSource``, the used ranges ahead that the capture (chunks of
    ``chunk_size``) will read through the page cache are prefetched.
    """
    rescuer = RescueReader(source, retries=retries) if rescue else None
    locate = RescueReader(source, retries=0)
    prefetch = _prefetcher(source, allocation, chunk_size)

    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        if prefetch is not None:
            prefetch(offset)
        if throttle is not None:
            throttle.consume(len(buf))
        if rescuer is not None:
            return rescuer.read_chunk(offset, buf)
        try:
            source.readinto_at(offset, buf)
        except SourceIOError:
            # Name the first unreadable sector, not just the start of the failed chunk.
            bad = locate.read_chunk(offset, buf)
            if not bad:
                return []  # the retry read everything: a transient error
            sector = bad[0][0] // source.sector_size
            raise SourceIOError(
                f"read error on {label} at byte {bad[0][0]} (sector {sector}): input/output error; "
                "add --rescue to image past unreadable sectors (the partial image continues with --resume)",
                offset=bad[0][0],
            ) from None
        return []

    return read


def _prefetcher(source: BlockSource, allocation: AllocationMap | None,
                chunk_size: int) -> Callable[[int], None] | None:
    if allocation is None or not isinstance(source, FileSource) or source.direct:
        return None
    fd, done = source.fd, [0]

    def prefetch(offset: int) -> None:
        start = max(done[0], offset + PREFETCH_AHEAD - PREFETCH_STEP)
        end = min(source.size, offset + PREFETCH_AHEAD)
        if end - start < PREFETCH_STEP and end < source.size:
            return
        for o, n in allocation.used_in(start, end - start):
            for po, pn in _pieces(o, n, chunk_size):
                if source.reads_direct(po, pn):
                    continue  # read past the page cache: a hint would read it twice
                try:
                    os.posix_fadvise(fd, po, pn, os.POSIX_FADV_WILLNEED)
                except OSError:
                    return  # only a hint
        done[0] = end

    return prefetch


def _pieces(offset: int, length: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` cut at the chunk boundaries, as the capture reads it."""
    if chunk_size <= 0:
        return [(offset, length)]
    out = []
    end = offset + length
    while offset < end:
        stop = min(end, (offset // chunk_size + 1) * chunk_size)
        out.append((offset, stop - offset))
        offset = stop
    return out
