"""What is stored under a location: each image with its size, source and date, sets, unfinished uploads.

``storage.list_images`` says which objects there are; this reads each candidate's header frame (one
small ranged read, several at once) to tell images from other objects and to say what they hold.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import CorruptImageError, Error
from ..format import c_image as c
from ..format.metaframe import Header
from ..storage import StoredImage, list_images, open_reader

MAX_HEADER = 64 << 20  # a header frame (allocation map included) is far smaller
READERS = 8


def _header(name: str) -> Header | None:
    try:
        reader = open_reader([name], readahead=0)
    except Error:
        return None
    try:
        if reader.size < c.SKIPPABLE_HEADER.size:
            return None
        magic, size = c.SKIPPABLE_HEADER.unpack(reader.read_at(0, c.SKIPPABLE_HEADER.size))
        if magic != c.HEADER_MAGIC or size > min(MAX_HEADER, reader.size - 8):
            return None
        return Header.decode(reader.read_at(8, size), 8)
    except (CorruptImageError, Error):
        return None
    finally:
        reader.close()


def _describe(entry: StoredImage) -> dict[str, Any] | None:
    out: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "stored_bytes": entry.size,
                           "modified": entry.modified, "parts": entry.parts}
    if entry.kind == "upload":
        out["upload_id"] = entry.details.get("upload_id")
        return out
    if entry.kind == "set":
        return out
    header = _header(str(entry.details.get("first", entry.name)))
    if header is None:
        return None  # not an image
    source = header.meta.get("source") or {}
    out.update(source_size=header.source_size, created=header.meta.get("created"),
               hostname=header.meta.get("hostname"), used_only=header.used_only,
               source={k: source[k] for k in ("kind", "path", "model", "serial", "size") if k in source},
               in_set=bool(entry.details.get("in_set")))
    return out


def catalog(location: str) -> list[dict[str, Any]]:
    """Images (with source and date from their headers), sets and unfinished uploads under ``location``."""
    entries = list_images(location)
    with ThreadPoolExecutor(READERS, thread_name_prefix="catalog") as pool:
        described = list(pool.map(_describe, entries))
    return [d for d in described if d is not None]
