"""What every format writer shares: its options, its contract, and a table written page by page.

A writer is built from the source's size and sector size and the options, and validates them in its
constructor (``UsageError`` with one line: a block size not allowed, a size over the format's limit),
before anything is created.  Then ``write(sink, units)`` lays the file out from the ``Feed``'s units,
which come in source order and hold only non-zero data, and leaves the file at its final size.
"""

from __future__ import annotations

import struct
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .feed import Transform, Unit
from .sink import Sink

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
HOLE_GRANULE = 64 * KiB  # zero runs this long inside an allocated block stay holes in the output file


@dataclass(frozen=True)
class ExportOptions:
    format: str
    block_size: int | None = None  # VHDX/VHD block, qcow2 cluster, VMDK grain (None: the format's default)
    logical_sector: int | None = None  # VHDX: 512 or 4096 (None: the source's)
    azure: bool = False  # VHD: fixed, N MiB + footer, within Azure's upload limits
    compress: bool = False  # qcow2: zstd-compressed clusters
    file_name: str = "disk"  # the output's base name (VMDK descriptors name their extent)
    disk_id: uuid.UUID = field(default_factory=uuid.uuid4)  # VHD unique id, VMDK ddb.uuid
    identity: dict[str, Any] = field(default_factory=dict)  # JSON-able; embedded where the format has room


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def power_of_two_in(value: int, low: int, high: int, what: str) -> int:
    if value < low or value > high or value & (value - 1):
        raise UsageError(f"{what} {human(value)} is not allowed: use a power of two from {human(low)} to "
                         f"{human(high)}")
    return value


class Writer(ABC):
    """One output format.  ``virtual_size`` is the disk size the file describes (the source's size,
    rounded up where the format needs whole sectors or MiB; ``notes`` says so in one line)."""

    name: str
    granule: int

    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions) -> None:
        self.source_size = source_size
        self.sector_size = sector_size
        self.opts = opts
        self.virtual_size = source_size
        self.notes: list[str] = []

    def pad_to(self, multiple: int, why: str) -> None:
        padded = round_up(self.source_size, multiple)
        if padded != self.virtual_size and padded > self.virtual_size:
            self.virtual_size = padded
            self.notes.append(f"disk size rounded up from {self.source_size} to {padded} bytes ({why}); "
                              "the added bytes read as zeros")

    def check_limit(self, limit: int, hint: str, limit_text: str | None = None) -> None:
        if self.virtual_size > limit:
            raise UsageError(f"the source is {self.virtual_size} bytes; {self.name} holds at most "
                             f"{limit_text or human(limit)}{': ' + hint if hint else ''}")

    def refuse_empty(self) -> None:
        if self.source_size == 0:
            raise UsageError(f"the source is empty (0 bytes): QEMU, libvhdi/libvmdk and hypervisors cannot open a "
                             f"0-byte {self.name}; use --format qcow2 or raw")

    @property
    def transform(self) -> Transform | None:
        return None

    @abstractmethod
    def write(self, sink: Sink, units: Iterable[Unit]) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "virtual_size": self.virtual_size}


class PagedTable:
    """A table of fixed-size entries at ``offset`` in the output, set in increasing index order and
    written a page at a time, so a table of any size costs one page of memory.

    Pages never touched are written only when ``fill`` is not zero (a hole reads as zeros)."""

    def __init__(self, sink: Sink, offset: int, entry: struct.Struct, count: int, fill: int = 0,
                 page_entries: int = 8192) -> None:
        self.sink, self.offset, self.entry, self.count = sink, offset, entry, count
        self.fill = fill
        self.per_page = page_entries
        self._blank = bytes(entry.pack(fill)) * page_entries
        self._page = -1
        self._buf = bytearray(self._blank)
        self._dirty = False
        self._flushed = -1  # last page written

    def _flush_through(self, page: int) -> None:
        """Write the current page, and blank pages up to ``page`` when blanks are not zero."""
        if self._page >= 0 and (self._dirty or self.fill):
            self._write(self._page, self._buf)
        self._flushed = max(self._flushed, self._page)
        if self.fill:
            for p in range(self._flushed + 1, page + 1):
                self._write(p, self._blank)
            self._flushed = max(self._flushed, page)

    def _write(self, page: int, data: bytes | bytearray) -> None:
        first = page * self.per_page
        n = min(self.per_page, self.count - first)
        if n > 0:
            self.sink.pwrite(memoryview(data)[: n * self.entry.size], self.offset + first * self.entry.size)

    def set(self, index: int, value: int) -> None:
        page = index // self.per_page
        if page != self._page:
            if page < self._page:
                raise ValueError(f"table entry {index} set after page {self._page}")
            self._flush_through(page - 1)
            self._page = page
            self._buf[:] = self._blank
            self._dirty = False
        self.entry.pack_into(self._buf, (index - page * self.per_page) * self.entry.size, value)
        self._dirty = True

    def finish(self) -> None:
        self._flush_through(-(-self.count // self.per_page) - 1)
