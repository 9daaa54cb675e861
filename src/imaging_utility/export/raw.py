"""Raw writer: the disk's bytes at their own offsets, as a sparse file (zero runs of 64 KiB or more are
holes, which read as zeros and take no space where the filesystem supports holes)."""

from __future__ import annotations

from collections.abc import Iterable

from .base import HOLE_GRANULE, ExportOptions, Writer
from .feed import Unit
from .sink import Sink


class RawWriter(Writer):
    name = "raw"
    granule = HOLE_GRANULE

    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions) -> None:
        super().__init__(source_size, sector_size, opts)

    def write(self, sink: Sink, units: Iterable[Unit]) -> None:
        for unit in units:
            for start, end in unit.runs:
                sink.pwrite(unit.view[start : min(end, unit.length)], unit.offset + start)
        sink.truncate(self.virtual_size)
