"""HTTP ``Range: bytes=…`` requests (RFC 9110 §14.1-14.4, §15.3.7, §15.5.17) for the WebDAV server.

``parse`` turns the header into the ranges to send: ``None`` to send the whole file (no header, a
unit other than bytes, or more ranges than are worth answering one by one), a list of inclusive
``(first, last)`` pairs to answer 206 (one range: a plain body with ``Content-Range``; several:
``multipart/byteranges``), or ``Unsatisfiable`` for 416.  A malformed range (``bytes=5-2``, a
suffix of zero as in ``bytes=-0``, garbage) is answered 416 too, never guessed at.

Pure functions, no I/O.
"""

from __future__ import annotations

import re

__all__ = ["MAX_RANGES", "Unsatisfiable", "multipart_parts", "parse"]

MAX_RANGES = 64
"""More ranges than this in one request are answered with the whole file (RFC 9110 §14.2 allows
it; it stops a request for thousands of tiny overlapping ranges from costing more than the file)."""

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """The Range header asks for nothing the file has, or is malformed: answer 416."""


def parse(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The inclusive byte ranges ``header`` asks of a file of ``size`` bytes; see the module docstring."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None  # another unit: ignored, the whole file is sent
    ranges: list[tuple[int, int]] = []
    items = [s for s in spec.split(",") if s.strip()]
    if not items:
        raise Unsatisfiable(f"no range in {header!r}")
    for item in items:
        m = _SPEC.match(item)
        if not m or not (m.group(1) or m.group(2)):
            raise Unsatisfiable(f"malformed range {item.strip()!r}")
        first, last = m.group(1), m.group(2)
        if not first:  # suffix: the last N bytes
            n = int(last)
            if n == 0:
                raise Unsatisfiable("a suffix range of zero bytes")
            if size:
                ranges.append((max(0, size - n), size - 1))
            continue
        a = int(first)
        b = int(last) if last else None
        if b is not None and b < a:
            raise Unsatisfiable(f"range {item.strip()!r} ends before it starts")
        if a < size:
            ranges.append((a, size - 1 if b is None else min(b, size - 1)))
    if not ranges:
        raise Unsatisfiable(f"no range of {header!r} lies inside the {size} bytes")
    if len(ranges) > MAX_RANGES:
        return None
    if len(ranges) > 1:
        ranges = _coalesce(ranges)
    return ranges


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ranges merged (RFC 9110 §14.3 lets a server do so), in ascending order."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def multipart_parts(ranges: list[tuple[int, int]], size: int, content_type: str,
                    boundary: str) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """The parts of a ``multipart/byteranges`` body: ``(part header, first, last)`` each, the closing
    delimiter, and the body's total length (for ``Content-Length``)."""
    parts = []
    total = 0
    for a, b in ranges:
        head = (f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode("latin-1")
        parts.append((head, a, b))
        total += len(head) + b - a + 1
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return parts, tail, total + len(tail)
