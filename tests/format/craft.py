"""Craft images frame by frame: take a real image apart, change, drop or insert frames, and put it back
together with a seek table that matches (so only the change under test is wrong)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagetools import run_cli  # noqa: F401  (re-exported for the spec tests)
from imaging_utility.format import c_image as c
from imaging_utility.format.index import SeekTable
from imaging_utility.format.metaframe import Event, Header, Trailer
from imaging_utility.storage.local import PartReader, resolve_parts


@dataclass
class Frame:
    raw: bytes
    dsize: int = 0  # 0: a skippable frame
    checksum: int = c.XXH64_EMPTY_LOW32

    @property
    def magic(self) -> int:
        return int.from_bytes(self.raw[:4], "little")


class Crafted:
    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames

    @classmethod
    def of(cls, path: Path | str) -> Crafted:
        reader = PartReader(resolve_parts(str(path)))
        try:
            table, _ = SeekTable.load(reader.read_at, reader.size)
            frames, off = [], 0
            for csize, dsize, checksum in zip(table.csizes, table.dsizes, table.checksums, strict=True):
                frames.append(Frame(reader.read_at(off, csize), dsize, checksum))
                off += csize
            return cls(frames)
        finally:
            reader.close()

    # --- metadata frames ---------------------------------------------------------------
    @property
    def header(self) -> Header:
        return Header.decode(self.frames[0].raw[8:], 8)

    @header.setter
    def header(self, header: Header) -> None:
        self.frames[0] = Frame(header.encode())

    def edit_header_meta(self, **changes: Any) -> None:
        h = self.header
        self.header = replace(h, meta={**h.meta, **changes})

    def index_of(self, magic: int) -> list[int]:
        return [i for i, f in enumerate(self.frames) if f.magic == magic and not f.dsize]

    @property
    def trailer(self) -> Trailer:
        i = self.index_of(c.TRAILER_MAGIC)[-1]
        return Trailer.decode(self.frames[i].raw[8:], 8)

    @trailer.setter
    def trailer(self, trailer: Trailer) -> None:
        self.frames[self.index_of(c.TRAILER_MAGIC)[-1]] = Frame(trailer.encode())

    def edit_trailer_meta(self, **changes: Any) -> None:
        t = self.trailer
        self.trailer = replace(t, meta={**t.meta, **changes})

    def events(self) -> list[tuple[int, Event]]:
        return [(i, Event.decode(self.frames[i].raw[8:], 8)) for i in self.index_of(c.EVENT_MAGIC)]

    def data_frame(self, chunk: int) -> int:
        """Index in ``frames`` of chunk ``chunk``'s data frame."""
        return [i for i, f in enumerate(self.frames) if f.dsize][chunk]

    # --- output --------------------------------------------------------------------------
    def image(self) -> bytes:
        table = SeekTable()
        for f in self.frames:
            table.append(len(f.raw), f.dsize, f.checksum)
        return b"".join(f.raw for f in self.frames) + table.encode()

    def write(self, path: Path) -> Path:
        path.write_bytes(self.image())
        return path


def skippable(magic: int, payload: bytes) -> Frame:
    return Frame(c.SKIPPABLE_HEADER.pack(magic, len(payload)) + payload)
