"""Append frames to an image and close it with a trailer and the seek table (docs/image-format.md §2).

Not thread-safe: one thread appends frames in chunk order.  Sticky: after an
I/O error every call raises it again (``storage.FrameSink``).  Until ``finish`` the
file is a valid prefix that ``recover`` can continue.
"""

from __future__ import annotations

import sys
from array import array

from ..format import c_image as c
from ..format.codec import frame_checksum
from ..format.index import SeekTable
from ..format.metaframe import Event, Header, Trailer
from ..storage import FrameSink, create_sink
from ..storage.destlock import DestLock


class ImageWriter:
    def __init__(self, parts: FrameSink, header: Header, table: SeekTable, frame_crcs: array[int]) -> None:
        self.parts = parts
        self.header = header
        self.table = table
        self.frame_crcs = frame_crcs  # CRC-32 of each data frame written so far (the trailer's FCRC)

    @property
    def chunks_written(self) -> int:
        return len(self.frame_crcs)

    @classmethod
    def create(cls, dest: str, split_size: int | None, header: Header, lock: DestLock | None = None) -> ImageWriter:
        frame = header.encode()
        parts = create_sink(dest, split_size, frame, header.source_size, lock)
        table = SeekTable()
        table.append(len(frame), 0, c.XXH64_EMPTY_LOW32)
        return cls(parts, header, table, array("I"))

    @property
    def bytes_written(self) -> int:
        return self.parts.total

    def add_chunk(self, frame: bytes | memoryview, length: int, crc: int) -> None:
        """Append the data frame of the next chunk (``length`` raw bytes; ``crc`` = CRC-32 of ``frame``)."""
        self.parts.write_frame(frame)
        self.table.append(len(frame), length, frame_checksum(frame))
        self.frame_crcs.append(crc)

    def add_event(self, event: Event) -> None:
        frame = event.encode()
        self.parts.write_frame(frame)
        self.table.append(len(frame), 0, c.XXH64_EMPTY_LOW32)

    def finish(self, trailer: Trailer) -> list[str]:
        """Write the trailer and the seek table, fsync, close; returns the image's file(s)."""
        crcs = array("I", self.frame_crcs)
        if sys.byteorder == "big":
            crcs.byteswap()
        trailer.frame_crcs = crcs.tobytes()
        frame = trailer.encode()
        self.parts.write_frame(frame)
        self.table.append(len(frame), 0, c.XXH64_EMPTY_LOW32)
        self.parts.write_frame(self.table.encode())
        return self.parts.finish()

    def sync(self) -> None:
        self.parts.sync()

    def close(self) -> None:
        self.parts.close()
