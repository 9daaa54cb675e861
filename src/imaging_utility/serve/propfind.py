"""WebDAV ``PROPFIND`` (RFC 4918 §9.1) over a ``FileTree``, streamed.

The 207 Multi-Status body is produced a few responses at a time as the directory is read
(``FileTree.iterdir``), so a directory of 100,000 entries costs the memory of a few entries, not of
the whole listing.  ``Depth: infinity`` (and a request without Depth, which RFC 4918 treats as
infinity) is refused with 403 and the ``propfind-finite-depth`` precondition (§9.1, §16): a whole
tree in one response is unbounded work, and a looping directory structure would never end.

Properties served: ``displayname``, ``resourcetype``, ``getcontentlength``, ``getcontenttype``,
``getetag``, ``getlastmodified`` (files), and ``creationdate`` is never claimed.  ``allprop`` (or
an empty body) returns them all; ``prop`` returns those asked for, the rest as 404 in a second
propstat; ``propname`` lists the names.
"""

from __future__ import annotations

import functools
import mimetypes
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from defusedxml import ElementTree

from ..errors import Error
from ..filesystems.tree import Entry, FileTree

__all__ = ["MAX_BODY", "BadRequest", "content_type", "etag", "last_modified", "parse_request", "responses"]

DAV = "DAV:"
MAX_BODY = 64 * 1024
BATCH = 64  # responses per chunk written
LIVE = ("displayname", "resourcetype", "getcontentlength", "getcontenttype", "getetag", "getlastmodified")
FILE_ONLY = {"getcontentlength", "getcontenttype", "getetag"}
PROLOGUE = b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
EPILOGUE = b"</D:multistatus>\n"
FINITE_DEPTH = (b'<?xml version="1.0" encoding="utf-8"?>\n'
                b'<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n')


class BadRequest(Exception):
    """The PROPFIND body is not a propfind document we can answer (400)."""


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def etag(e: Entry) -> str:
    return f'"{e.inode}-{e.size}-{e.mtime_ns}"'


@functools.lru_cache(maxsize=1024)
def _type_of(suffix: str) -> str:
    return mimetypes.guess_type("x" + suffix)[0] or "application/octet-stream"


def content_type(e: Entry) -> str:
    dot = e.name.rfind(".")
    return _type_of(e.name[dot:].lower() if dot > 0 else "")


def last_modified(e: Entry) -> str | None:
    """RFC 9110 IMF-fixdate (what ``email.utils.formatdate(usegmt=True)`` writes, at a fraction of its cost)."""
    if e.mtime_ns is None:
        return None
    try:
        t = time.gmtime(e.mtime_ns // 1_000_000_000)
    except (OverflowError, OSError, ValueError):  # a hostile timestamp
        return None
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def parse_request(body: bytes) -> tuple[str, list[tuple[str, str]]]:
    """``("allprop" | "propname" | "prop", [(namespace, name), ...])`` from a request body."""
    if not body.strip():
        return "allprop", []
    try:
        root = ElementTree.fromstring(body)
    except Exception as e:  # defusedxml's and expat's errors alike
        raise BadRequest(f"the PROPFIND body is not well-formed XML: {e}") from None
    if root.tag != f"{{{DAV}}}propfind":
        raise BadRequest(f"the PROPFIND body's root element is {root.tag}, not DAV:propfind")
    for child in root:
        if child.tag == f"{{{DAV}}}allprop":
            return "allprop", []
        if child.tag == f"{{{DAV}}}propname":
            return "propname", []
        if child.tag == f"{{{DAV}}}prop":
            names = []
            for p in child:
                ns, _, local = str(p.tag)[1:].partition("}") if str(p.tag).startswith("{") else ("", "", p.tag)
                names.append((ns, local))
            return "prop", names
    raise BadRequest("the PROPFIND body names no allprop, propname or prop")


def _value(e: Entry, name: str, display: str) -> str | None:
    if name == "displayname":
        return escape(display)
    if name == "resourcetype":
        return "<D:collection/>" if e.type == "dir" else ""
    if e.type == "dir" and name in FILE_ONLY:
        return None
    if name == "getcontentlength":
        return str(e.size)
    if name == "getcontenttype":
        return escape(content_type(e))
    if name == "getetag":
        return escape(etag(e))
    if name == "getlastmodified":
        return last_modified(e)
    return None


def _allprop(e: Entry, href: str, display: str) -> str:
    """``_response`` for ``allprop``, the common case, written straight out."""
    modified = last_modified(e)
    when = f"<D:getlastmodified>{modified}</D:getlastmodified>" if modified else ""
    if e.type == "dir":
        props = f"<D:resourcetype><D:collection/></D:resourcetype>{when}"
    else:
        props = (f"<D:resourcetype/><D:getcontentlength>{e.size}</D:getcontentlength>"
                 f"<D:getcontenttype>{escape(content_type(e))}</D:getcontenttype>"
                 f"<D:getetag>{escape(etag(e))}</D:getetag>{when}")
    return (f"<D:response><D:href>{escape(href)}</D:href><D:propstat><D:prop><D:displayname>{escape(display)}"
            f"</D:displayname>{props}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")


def _response(e: Entry, href: str, display: str, mode: str, wanted: list[tuple[str, str]]) -> str:
    if mode == "allprop":
        return _allprop(e, href, display)
    found: list[str] = []
    missing: list[str] = []
    if mode == "prop":
        for ns, name in wanted:
            value = _value(e, name, display) if ns == DAV else None
            if value is None:
                tag = f"D:{name}" if ns == DAV else f'X:{escape(name)} xmlns:X="{escape(ns, {chr(34): "&quot;"})}"'
                missing.append(f"<{tag}/>")
            else:
                found.append(f"<D:{name}>{value}</D:{name}>")
    else:
        for name in LIVE:
            value = _value(e, name, display)
            if value is not None:
                found.append(f"<D:{name}/>" if mode == "propname" else f"<D:{name}>{value}</D:{name}>")
    out = [f"<D:response><D:href>{escape(href)}</D:href>"]
    if found or not missing:
        out.append(f"<D:propstat><D:prop>{''.join(found)}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        out.append(f"<D:propstat><D:prop>{''.join(missing)}</D:prop>"
                   "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>")
    out.append("</D:response>")
    return "".join(out)


def responses(tree: FileTree, top: Entry, href: str, depth: int, mode: str, wanted: list[tuple[str, str]],
              dav_name: Callable[[str], str], served: tuple[str, ...],
              log: Callable[[str], Any]) -> Iterator[bytes]:
    """The 207 body for ``top`` (and its children with ``depth`` 1), a few responses per chunk.

    A directory that turns out unreadable part way ends the listing with a response for it whose
    status is 500 and whose description says why, so the document stays well-formed."""
    yield PROLOGUE
    yield _response(top, href, dav_name(top.name) or "/", mode, wanted).encode("utf-8", "replace")
    if depth == 0 or top.type != "dir":
        yield EPILOGUE
        return
    base = href if href.endswith("/") else href + "/"
    batch: list[str] = []
    try:
        for e in tree.iterdir(top.path):
            if e.type not in served:
                continue
            shown = dav_name(e.name)
            child = base + quote(shown, safe="") + ("/" if e.type == "dir" else "")
            batch.append(_response(e, child, shown, mode, wanted))
            if len(batch) >= BATCH:
                yield "".join(batch).encode("utf-8", "replace")
                batch = []
    except Error as err:
        log(f"PROPFIND {top.path}: {err}")
        batch.append(f"<D:response><D:href>{escape(href)}</D:href><D:status>HTTP/1.1 500 Internal Server Error"
                     f"</D:status><D:responsedescription>{escape(str(err))}</D:responsedescription></D:response>")
    yield "".join(batch).encode("utf-8", "replace")
    yield EPILOGUE
