"""The storage protocol: what ``image/`` asks of the place an image's bytes live (DESIGN §8).

An image is one byte stream, stored as one file or object or as split parts (``NAME.001``, …) cut on
frame boundaries.  Reading is positional (``BlobReader.read_at``); writing appends whole frames
(``FrameSink.write_frame``) and ends with a durable commit (``FrameSink.finish``): before it, a reader
never sees the image as finished.  ``Partial`` is what an interrupted write left behind, as much as a
resume needs.  Implementations: ``local`` (files), ``s3`` (objects, multipart uploads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class BlobReader(Protocol):
    """The joined bytes of an image's part(s).  Thread-safe."""

    paths: list[str]
    size: int

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; ``CorruptImageError`` past the end, ``TargetIOError`` on I/O."""
        ...

    def locate(self, offset: int) -> tuple[str, int]:
        """(part name, offset in that part) of ``offset`` of the joined bytes, for error messages."""
        ...

    def close(self) -> None: ...


class FrameSink(Protocol):
    """Appends whole frames.  Not thread-safe; sticky: after its first error every call raises it."""

    total: int  # bytes appended so far (the image's size once finished)

    def write_frame(self, frame: bytes | memoryview) -> None: ...

    def sync(self) -> None:
        """Make what was appended so far durable, as far as the store allows (kept for ``--resume``)."""
        ...

    def finish(self) -> list[str]:
        """Durable commit of the whole image (after the last frame); returns its part names."""
        ...

    def close(self) -> None:
        """Release without committing: what was written stays, for ``--resume``."""
        ...


class Partial(Protocol):
    """What an interrupted write to DEST left: its first (header) frame and how to continue."""

    @property
    def name(self) -> str:
        """The first file or object, for messages."""
        ...

    @property
    def head(self) -> bytes:
        """The first frame's bytes as far as they were stored (up to the size it declares)."""
        ...

    @property
    def reader(self) -> BlobReader | None:
        """The bytes written so far, when the store can read them back (files)."""
        ...

    def continue_at(self, kept: int) -> FrameSink:
        """A sink appending after the first ``kept`` bytes of ``reader`` (the rest is dropped)."""
        ...

    def replay(self) -> FrameSink:
        """For stores that cannot read an unfinished write back (S3 multipart uploads): a sink to which
        the whole image is written again from its header frame on; it checks each piece against what was
        already stored and stores only from the first piece that differs."""
        ...

    def close(self) -> None: ...


@dataclass
class StoredImage:
    """One image (or set) found by ``list_images``."""

    name: str  # what to give the commands (a file, ``NAME`` of split parts, an s3:// URL)
    size: int  # bytes stored (all parts)
    modified: str  # ISO 8601, UTC
    parts: int = 1
    kind: str = "image"  # "image", "upload" (unfinished multipart upload), "set"
    details: dict[str, object] = field(default_factory=dict)
