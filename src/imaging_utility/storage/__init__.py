"""Where image bytes live: local files and split parts, S3 objects (DESIGN §8).

The one place a name becomes storage: ``s3://bucket/key`` is an S3 object (``s3read``, ``s3write``),
anything else a local path (``local``).  ``image/`` and everything above use only these functions and
the protocol in ``base``, so every command reads and writes both without knowing which.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .base import BlobReader, FrameSink, Partial, StoredImage
from .s3client import configure as configure_s3
from .s3client import is_s3

if TYPE_CHECKING:
    from .destlock import DestLock

__all__ = ["BlobReader", "FrameSink", "Partial", "StoredImage", "abandoned_uploads", "configure_s3",
           "create_sink", "discard", "existing_outputs", "is_listing", "is_remote", "list_images", "open_blob",
           "open_partial", "open_reader", "resolve"]


def is_remote(name: str) -> bool:
    """True for names that are not local paths (``s3://…``)."""
    return is_s3(name)


def resolve(name: str) -> list[str]:
    """The file(s) or object(s) making up the finished image ``name`` (itself, ``NAME.001``…, siblings)."""
    if is_s3(name):
        from .s3list import resolve_objects

        return resolve_objects(name)
    from .local import resolve_parts

    return resolve_parts(name)


def is_listing(name: str) -> bool:
    """True for a name that stands for what is under it (``s3://bucket/`` or ``s3://bucket/prefix/``)."""
    if not is_s3(name):
        return False
    key = name[len("s3://"):].partition("/")[2]
    return not key or key.endswith("/")


def open_reader(names: list[str], *, readahead: int | None = None) -> BlobReader:
    """Positional reads over the parts ``names`` (from ``resolve``) joined; ``readahead``: blocks a
    remote reader fetches ahead of a sequential client (0: none)."""
    if names and is_s3(names[0]):
        from .s3read import S3Reader

        return S3Reader(names) if readahead is None else S3Reader(names, readahead=readahead)
    from .local import PartReader

    return PartReader(names)


def open_blob(name: str) -> BlobReader:
    return open_reader(resolve(name))


def existing_outputs(dest: str) -> list[str]:
    """What an image written to ``dest`` may already have left there (image, parts, resume record)."""
    if is_s3(dest):
        from .s3write import existing_outputs as s3_existing

        return s3_existing(dest)
    from .local import existing_outputs as local_existing

    return local_existing(dest)


def discard(dest: str, *, uploads_only: bool = False) -> threading.Thread | None:
    """Remove an old or partial image at ``dest`` (``--force``, ``--abort``), or with ``uploads_only``
    just abort its unfinished uploads; local files are unlinked on the returned thread (join it)."""
    if is_s3(dest):
        from .s3write import remove_outputs

        remove_outputs(dest, uploads_only=uploads_only)
        return None
    if uploads_only:
        return None
    from .local import remove_outputs as local_remove

    return local_remove(dest)


def abandoned_uploads(dest: str) -> list[str]:
    """Unfinished uploads of ``dest`` (S3; a local partial image is just its files)."""
    if not is_s3(dest):
        return []
    from .s3write import abandoned_uploads as s3_uploads

    return [f"{u['Key']} (upload {u['UploadId']}, started {u['Initiated']:%Y-%m-%d %H:%M:%S})"
            for u in s3_uploads(dest)]


def create_sink(dest: str, split_size: int | None, header_frame: bytes, size_hint: int,
                lock: DestLock | None = None) -> FrameSink:
    """A new image at ``dest`` whose first frame is ``header_frame``; ``size_hint``: the source size.

    ``lock``: local files (every part) are locked before a byte of them changes; S3 has no locks (an
    object appears only when its upload completes, and a second run finds the first one's resume record)."""
    if is_s3(dest):
        from .s3write import S3Sink, image_bound, part_size_for

        bound = image_bound(size_hint)
        sink = S3Sink(dest, split_size, part_size_for(min(bound, split_size or bound)))
        sink.create(header_frame)
        return sink
    from .local import PartWriter

    writer = PartWriter(dest, split_size, lock)
    writer.create(header_frame)
    return writer


def open_partial(dest: str, split_size: int | None, lock: DestLock | None = None) -> Partial:
    """What an interrupted image at ``dest`` left, for ``--resume`` (local parts written on are locked)."""
    if is_s3(dest):
        from .s3write import S3Partial

        return S3Partial(dest, split_size)
    from .local import LocalPartial

    return LocalPartial(dest, split_size, lock)


def list_images(location: str) -> list[StoredImage]:
    """The images, sets and unfinished uploads under ``location`` (an ``s3://bucket/prefix/``)."""
    from .s3list import list_prefix

    return list_prefix(location)
