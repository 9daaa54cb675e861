"""What an interrupted capture left: the frames of a partial image, read without changing it.

A partial image has no seek table (docs/image-format.md §9): its frames are walked from the start, as a
resume does, but nothing is decoded or truncated: this only says how far the capture got (complete data
frames, the source bytes they hold, where the valid prefix ends) for ``info`` and ``verify``.  A resume
decodes and checks those frames before it continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CorruptImageError
from ..format import c_image as c
from ..format.index import walk_frames
from ..format.metaframe import Header, starts_like_image
from ..storage.local import PartReader, resolve_parts


@dataclass
class PartialImage:
    paths: list[str]
    image_bytes: int  # size of the file(s)
    header: Header | None  # None: not even the header frame is complete
    foreign: bool = False  # it begins with something else than an image header: not an image at all
    chunks: int = 0  # complete data frames, in order
    source_bytes: int = 0  # source bytes those frames hold
    valid_bytes: int = 0  # image bytes up to the end of the last complete frame

    @property
    def chunk_count(self) -> int:
        return -(-self.header.source_size // self.header.chunk_size) if self.header else 0

    def as_dict(self) -> dict[str, Any]:
        h = self.header
        return {"image": self.paths, "complete": False, "image_bytes": self.image_bytes,
                "valid_image_bytes": self.valid_bytes, "chunks_captured": self.chunks,
                "chunk_count": self.chunk_count, "source_bytes_captured": self.source_bytes,
                "source_size": h.source_size if h else None, "chunk_size": h.chunk_size if h else None,
                "command_line": h.meta.get("command_line") if h else None,
                "source": h.meta.get("source") if h else None}


def inspect_partial(path: str) -> PartialImage:
    """How far the capture of the partial image at ``path`` got."""
    paths = resolve_parts(path)
    parts = PartReader(paths)
    try:
        out = PartialImage(paths, parts.size, None)
        if not starts_like_image(parts.read_at(0, min(4, parts.size))):  # as a resume refuses it
            out.foreign = True
            return out
        frames = walk_frames(parts.read_at, parts.size)
        first = next(frames, None)
        if first is None or first.magic != c.HEADER_MAGIC:
            return out
        try:
            out.header = Header.decode(parts.read_at(first.offset + 8, first.length - 8), first.offset + 8)
        except CorruptImageError:
            return out
        out.valid_bytes = first.length
        size, cs = out.header.source_size, out.header.chunk_size
        for frame in frames:
            if frame.magic == c.ZSTD_MAGIC:
                expected = min(cs, size - out.chunks * cs)
                if frame.content_size != expected or expected <= 0:
                    break
                out.chunks += 1
                out.source_bytes += expected
            elif frame.magic != c.EVENT_MAGIC:
                break  # a trailer or seek table of a cut-off finish, or something else: the prefix ends here
            out.valid_bytes = frame.offset + frame.length
        return out
    finally:
        parts.close()
