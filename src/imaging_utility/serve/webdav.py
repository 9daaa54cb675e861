"""Read-only WebDAV (RFC 4918) and HTML browsing of a ``FileTree``, on wsgidav + cheroot.

Only GET, HEAD (both with Range), OPTIONS and PROPFIND are served; every other method (PUT, DELETE,
MKCOL, COPY, MOVE, PROPPATCH, LOCK, UNLOCK, POST, …) is answered ``403 Forbidden`` before it reaches
wsgidav.  Locking is off, so OPTIONS advertises DAV class 1 only.  GET streams the file in 1 MiB
blocks; nothing reads a whole file.  Paths are resolved inside the tree only (``..`` cannot climb
above its root), and names that are not valid in XML or URLs (control characters, undecodable
bytes) are shown %-escaped (``%01``).  Browsers get an HTML listing with sizes and dates.

Thread-safety: cheroot serves each connection on a worker thread; they share the ``FileTree``,
which is thread-safe.
"""

from __future__ import annotations

import html
import mimetypes
import posixpath
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from cheroot import wsgi
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.error_printer import ErrorPrinter
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from ..errors import CorruptImageError, Error, NotFoundError
from ..filesystems.tree import Entry, FileTree
from ._listener import bind_error

__all__ = ["READ_METHODS", "WebDavServer", "dav_name", "make_app"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})
BLOCK = 1 << 20
SERVED_TYPES = ("file", "dir")
StartResponse = Callable[..., Any]


def dav_name(name: str) -> str:
    """``name`` with characters XML cannot carry (C0 controls, DEL, lone surrogates) written as ``%XX``."""
    if all(0x20 <= ord(c) != 0x7F and not 0xD800 <= ord(c) <= 0xDFFF for c in name):
        return name
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF else c
                   for c in name)


def resolve(tree: FileTree, path: str) -> Entry | None:
    """The entry a WebDAV path names (components as ``dav_name`` shows them), or ``None``."""
    cur = tree.stat("/")
    for comp in FileTree.normalize(path).split("/"):
        if not comp:
            continue
        if cur.type != "dir":
            return None
        try:
            cur = tree.stat(posixpath.join(cur.path, comp))
            continue
        except NotFoundError:
            pass
        found = [e for e in tree.list(cur.path) if dav_name(e.name) == comp]
        if not found:
            return None
        cur = found[0]
    return cur


class _File(DAVNonCollection):  # type: ignore[misc]
    def __init__(self, path: str, environ: dict[str, Any], entry: Entry, tree: FileTree) -> None:
        super().__init__(path, environ)
        self.entry = entry
        self.tree = tree

    def get_content_length(self) -> int:
        return self.entry.size

    def get_content_type(self) -> str:
        return mimetypes.guess_type(self.entry.name)[0] or "application/octet-stream"

    def get_creation_date(self) -> float | None:
        return None

    def get_display_name(self) -> str:
        return dav_name(self.entry.name)

    def get_etag(self) -> str:
        return f"{self.entry.inode}-{self.entry.size}-{self.entry.mtime_ns}"

    def get_last_modified(self) -> float | None:
        return self.entry.mtime_ns / 1e9 if self.entry.mtime_ns is not None else None

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> Any:
        return self.tree.open(self.entry.path)


class _Dir(DAVCollection):  # type: ignore[misc]
    def __init__(self, path: str, environ: dict[str, Any], entry: Entry, tree: FileTree) -> None:
        super().__init__(path, environ)
        self.entry = entry
        self.tree = tree

    def get_display_name(self) -> str:
        return dav_name(self.entry.name) or "/"

    def get_creation_date(self) -> float | None:
        return None

    def get_last_modified(self) -> float | None:
        return self.entry.mtime_ns / 1e9 if self.entry.mtime_ns is not None else None

    def get_member_names(self) -> list[str]:
        return [dav_name(e.name) for e in self.tree.list(self.entry.path) if e.type in SERVED_TYPES]

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst(posixpath.join(self.path, name), self.environ)


class TreeProvider(DAVProvider):  # type: ignore[misc]
    """A read-only wsgidav provider over a ``FileTree``; only files and directories are shown."""

    def __init__(self, tree: FileTree) -> None:
        super().__init__()
        self.tree = tree

    def is_readonly(self) -> bool:
        return True

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        self._count_get_resource_inst += 1
        try:
            entry = resolve(self.tree, path)
        except CorruptImageError:
            return None
        if entry is None or entry.type not in SERVED_TYPES:
            return None
        cls = _Dir if entry.type == "dir" else _File
        return cls(path, environ, entry, self.tree)


def _listing(entry: Entry, children: list[Entry], script: str, path: str) -> bytes:
    base = script.rstrip("/") + quote(path.rstrip("/"), safe="/")
    rows = []
    if path.strip("/"):
        rows.append(f'<tr><td><a href="{html.escape(base.rsplit("/", 1)[0] + "/")}">../</a></td>'
                    "<td></td><td></td><td></td></tr>")
    for e in sorted(children, key=lambda c: (c.type != "dir", c.name.casefold())):
        shown = dav_name(e.name)
        href = html.escape(f"{base}/{quote(shown, safe='')}" + ("/" if e.type == "dir" else ""), quote=True)
        label = html.escape(shown + ("/" if e.type == "dir" else ""))
        size = "" if e.type == "dir" else f"{e.size:,}"
        when = e.mtime.strftime("%Y-%m-%d %H:%M:%S UTC") if e.mtime else ""
        link = f'<a href="{href}">{label}</a>' if e.type in SERVED_TYPES else label
        note = html.escape(e.target or e.error or "") if e.type not in SERVED_TYPES else ""
        rows.append(f'<tr><td>{link}</td><td class="n">{size}</td><td>{when}</td>'
                    f"<td>{html.escape(e.type)} {note}</td></tr>")
    title = html.escape(path or "/")
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Index of " + title + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 12px;"
        "text-align:left}td.n{text-align:right;font-family:monospace}tr:nth-child(even){background:#f2f2f2}"
        "</style></head><body><h1>Index of " + title + "</h1><p>read-only view of the image; "
        f"{len(children)} entries</p><table><tr><th>Name</th><th>Size (bytes)</th><th>Modified</th>"
        "<th>Type</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    return page.encode("utf-8", "surrogateescape")


class ReadOnlyGate(BaseMiddleware):  # type: ignore[misc]
    """403 for every method that is not a read; the HTML listing for GET on a directory."""

    def is_disabled(self) -> bool:
        return False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"].upper()
        if method not in READ_METHODS:
            body = f"{method} refused: this WebDAV share is read-only\n".encode()
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        if method in ("GET", "HEAD"):
            tree: FileTree = self.config["imaging_utility.tree"]
            path = environ.get("PATH_INFO", "/") or "/"
            try:
                entry = resolve(tree, path)
                if entry is not None and entry.type == "dir":
                    if not path.endswith("/"):
                        loc = environ.get("SCRIPT_NAME", "") + quote(path, safe="/") + "/"
                        start_response("301 Moved Permanently", [("Location", loc), ("Content-Length", "0")])
                        return [b""]
                    page = _listing(entry, tree.list(entry.path), environ.get("SCRIPT_NAME", ""), path)
                    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                              ("Content-Length", str(len(page)))])
                    return [b""] if method == "HEAD" else [page]
            except Error as e:
                body = f"{e}\n".encode("utf-8", "surrogateescape")
                start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                                             ("Content-Length", str(len(body)))])
                return [body]
        result: Iterable[bytes] = self.next_app(environ, start_response)
        return result


def make_app(tree: FileTree, users: dict[str, str] | None = None) -> WsgiDAVApp:
    """The WSGI application; ``users`` maps user name → password for HTTP basic auth (none: anonymous)."""
    mapping: Any = {"*": {u: {"password": p} for u, p in users.items()}} if users else {"*": True}
    config = {
        "provider_mapping": {"/": TreeProvider(tree)},
        "imaging_utility.tree": tree,
        "lock_storage": False,
        "property_manager": None,
        "middleware_stack": [ErrorPrinter, HTTPAuthenticator, ReadOnlyGate, RequestResolver],
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False, "trusted_auth_header": None},
        "simple_dc": {"user_mapping": mapping},
        "dir_browser": {"enable": False},
        "block_size": BLOCK,
        "verbose": 1,
        "logging": {"enable": False},
        "suppress_version_info": True,
        "hotfixes": {"emulate_win32_lastmod": True, "re_encode_path_info": True, "unquote_path_info": False},
    }
    return WsgiDAVApp(config)


def _bind_errno(host: str, port: int, e: OSError) -> OSError:
    """cheroot reports a failed bind without its errno: bind once more to learn it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as again:
        return again
    return e


class WebDavServer:
    """cheroot serving ``make_app(tree, users)`` on ``host:port`` (port 0: any free port)."""

    def __init__(self, tree: FileTree, *, host: str = "127.0.0.1", port: int = 18081,
                 users: dict[str, str] | None = None, threads: int = 8) -> None:
        self.server = wsgi.Server((host, port), make_app(tree, users), numthreads=threads,
                                  server_name="imaging-utility")
        try:
            self.server.prepare()
        except OSError as e:
            raise bind_error(host, port, e if e.errno else _bind_errno(host, port, e)) from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        addr = self.server.bind_addr
        return str(addr[0]), int(addr[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def serve_forever(self) -> None:
        self.server.serve()

    def start(self) -> WebDavServer:
        """Serve on a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.server.serve, name="webdav", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> WebDavServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

