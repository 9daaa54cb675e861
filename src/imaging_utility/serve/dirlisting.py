"""The HTML listing of a directory for browsers (``webdav``'s GET on a directory), written a piece at a
time: sorted (directories first) up to ``SORT_LIMIT`` entries, streamed in on-disk order beyond."""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable, Iterator
from urllib.parse import quote

from ..filesystems.tree import Entry, FileTree

__all__ = ["SORT_LIMIT", "listing"]

SERVED_TYPES = ("file", "dir")
SORT_LIMIT = 10_000  # entries of a directory listing sorted in memory; larger listings stream unsorted


def _row(e: Entry, base: str, dav_name: Callable[[str], str]) -> str:
    shown = dav_name(e.name)
    href = html.escape(f"{base}/{quote(shown, safe='')}" + ("/" if e.type == "dir" else ""), quote=True)
    label = html.escape(shown + ("/" if e.type == "dir" else ""))
    size = "" if e.type == "dir" else f"{e.size:,}"
    when = e.mtime.strftime("%Y-%m-%d %H:%M:%S UTC") if e.mtime else ""
    link = f'<a href="{href}">{label}</a>' if e.type in SERVED_TYPES else label
    note = html.escape(e.target or e.error or "") if e.type not in SERVED_TYPES else ""
    return (f'<tr><td>{link}</td><td class="n">{size}</td><td>{when}</td>'
            f"<td>{html.escape(e.type)} {note}</td></tr>")


def listing(tree: FileTree, entry: Entry, script: str, path: str, dav_name: Callable[[str], str]) -> Iterator[bytes]:
    """The HTML listing, a piece at a time; sorted (directories first) up to ``SORT_LIMIT`` entries."""
    base = script.rstrip("/") + quote(path.rstrip("/"), safe="/")
    title = html.escape(path or "/")
    yield ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Index of " + title + "</title><style>"
           "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 12px;"
           "text-align:left}td.n{text-align:right;font-family:monospace}tr:nth-child(even){background:#f2f2f2}"
           "</style></head><body><h1>Index of " + title + "</h1><p>read-only view of the image</p><table><tr>"
           "<th>Name</th><th>Size (bytes)</th><th>Modified</th><th>Type</th></tr>").encode()
    if path.strip("/"):
        yield (f'<tr><td><a href="{html.escape(base.rsplit("/", 1)[0] + "/")}">../</a></td>'
               "<td></td><td></td><td></td></tr>").encode()
    entries = tree.iterdir(entry.path)
    head = list(itertools.islice(entries, SORT_LIMIT + 1))
    if len(head) <= SORT_LIMIT:
        head.sort(key=lambda c: (c.type != "dir", c.name.casefold()))
    count = 0
    for group in itertools.chain([head], iter(lambda: list(itertools.islice(entries, 256)), [])):
        count += len(group)
        yield "".join(_row(e, base, dav_name) for e in group).encode("utf-8", "replace")
    yield f"</table><p>{count} entries</p></body></html>".encode()
