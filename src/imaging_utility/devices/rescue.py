"""ddrescue-like reading: get every readable sector of a chunk, zero the rest, report them.

Strategy per chunk: one read of the whole chunk (the only read when the disk is
healthy).  If it fails, the range is halved on sector boundaries and each half
read on its own, recursing into the halves that fail, down to single logical
sectors.  A sector that still fails is retried ``retries`` more times, then
zero-filled and reported.  A chunk with one bad sector costs about
``2 * log2(chunk / sector)`` extra reads; a chunk that is bad throughout costs
about two reads per sector, so large dead areas are slow, as with ddrescue's
splitting phase.

Granularity: a buffered ``FileSource`` reads through the page cache, which fails
whole pages; open the source with ``direct=True`` to learn bad sectors at the
device's own sector size.
"""

from __future__ import annotations

from collections.abc import Callable

from ..blocks import BlockSource
from ..errors import SourceIOError


class RescueReader:
    """Reads chunks of ``source`` while tolerating unreadable sectors.

    ``read_chunk`` keeps all its state on the stack, so one reader may serve many
    threads if ``source`` is thread-safe and ``on_bad`` is; ``on_bad`` is called in
    the reading thread.  Errors other than ``SourceIOError`` (a range outside the
    source, a removed medium) propagate unchanged.
    """

    def __init__(
        self,
        source: BlockSource,
        *,
        retries: int = 1,
        on_bad: Callable[[int, int], None] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        self.source = source
        self.retries = retries
        self.on_bad = on_bad
        self.sector_size = max(1, source.sector_size)

    def read_chunk(self, offset: int, buf: memoryview | bytearray) -> list[tuple[int, int]]:
        """Fill ``buf`` with the bytes at ``offset``; return the unreadable ``(offset, length)``
        ranges inside it, coalesced and in order.  Those bytes of ``buf`` are zero."""
        view = memoryview(buf).cast("B")
        try:
            self.source.readinto_at(offset, view)
            return []
        except SourceIOError:
            pass
        state = _Scan(offset, self.on_bad)
        self._split(offset, view, state)
        state.flush()
        return state.bad

    def _split(self, offset: int, view: memoryview, state: _Scan) -> None:
        """``view`` at ``offset`` failed as a whole: read its halves, recursing into failures."""
        ss = self.sector_size
        first_sector_end = (offset // ss + 1) * ss
        if offset + len(view) <= first_sector_end:
            self._retry_sector(offset, view, state)
            return
        # Split at the sector boundary nearest the middle, so every piece stays sector-aligned.
        mid = offset + len(view) // 2
        mid = max(first_sector_end, mid - mid % ss)
        cut = mid - offset
        for off, part in ((offset, view[:cut]), (mid, view[cut:])):
            try:
                self.source.readinto_at(off, part)
            except SourceIOError:
                self._split(off, part, state)
            else:
                state.good()

    def _retry_sector(self, offset: int, view: memoryview, state: _Scan) -> None:
        for _ in range(self.retries):
            try:
                self.source.readinto_at(offset, view)
            except SourceIOError:
                continue
            state.good()
            return
        view[:] = bytes(len(view))
        state.bad_range(offset, len(view))


class _Scan:
    """Collects bad ranges in address order, coalescing neighbours, reporting each when it ends."""

    __slots__ = ("bad", "on_bad", "pending_len", "pending_off")

    def __init__(self, offset: int, on_bad: Callable[[int, int], None] | None) -> None:
        self.bad: list[tuple[int, int]] = []
        self.on_bad = on_bad
        self.pending_off = offset
        self.pending_len = 0

    def bad_range(self, offset: int, length: int) -> None:
        if self.pending_len and self.pending_off + self.pending_len == offset:
            self.pending_len += length
            return
        self.flush()
        self.pending_off, self.pending_len = offset, length

    def good(self) -> None:
        self.flush()

    def flush(self) -> None:
        if self.pending_len:
            self.bad.append((self.pending_off, self.pending_len))
            if self.on_bad is not None:
                self.on_bad(self.pending_off, self.pending_len)
            self.pending_len = 0
