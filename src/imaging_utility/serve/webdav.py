"""Read-only WebDAV (RFC 4918) and HTML browsing of a ``FileTree``, on wsgidav + cheroot.

Only GET, HEAD, OPTIONS and PROPFIND are served; every other method (PUT, DELETE, MKCOL, COPY, MOVE,
PROPPATCH, LOCK, UNLOCK, POST, …) is answered ``403 Forbidden``.  GET, HEAD and PROPFIND are answered
here (``ReadOnlyGate``), OPTIONS and authentication by wsgidav (its OPTIONS refusals answered by the
gate too).  Locking is off, so OPTIONS advertises DAV class 1 only.

- GET streams the file in 1 MiB blocks; ``Range`` is honoured per RFC 9110 (``httprange.py``: one
  range 206, several ``multipart/byteranges``, a malformed or unsatisfiable one 416).  A file whose
  data cannot be read (a run outside the volume, a damaged record) is answered with a one-line 500
  before any byte is sent; a read that fails part way ends the connection (the client sees a short
  body, never wrong bytes), with one line in the log.
- PROPFIND streams its 207 body (``propfind.py``) and refuses ``Depth: infinity`` with 403
  ``propfind-finite-depth``.
- A directory GET is an HTML listing: sorted when it has at most ``SORT_LIMIT`` entries, else
  streamed in on-disk order, so memory stays bounded.

Paths are resolved inside the tree only (``..`` cannot climb above its root), and names that are
not valid in XML or URLs (control characters, undecodable bytes) are shown %-escaped (``%01``).
Nothing a client sends leads to a traceback: cheroot's own error log is one line per error.

Thread-safety: cheroot serves each connection on a worker thread; they share the ``FileTree``,
which is thread-safe.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

from cheroot import wsgi
from wsgidav.dav_error import DAVError, get_http_status_string
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.util import normalize_path
from wsgidav.wsgidav_app import WsgiDAVApp

from ..errors import CorruptImageError, Error
from ..filesystems.tree import Entry, FileStream, FileTree
from . import httprange, propfind
from ._listener import bind_error, limit_malloc_arenas
from .dav_tree import SERVED_TYPES, TreeProvider, dav_name, resolve
from .dirlisting import listing

__all__ = ["READ_METHODS", "WebDavServer", "dav_name", "make_app"]

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})
BLOCK = 1 << 20
StartResponse = Callable[..., Any]


def _text(start_response: StartResponse, status: str, message: str,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = f"{message}\n".encode("utf-8", "replace")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *(extra or [])])
    return [body]


class _Cut(Exception):
    """A response body that cannot be completed: cheroot drops the connection (one log line)."""


def _read(src: FileStream, pos: int, view: memoryview, label: str) -> bytes:
    src.seek(pos)
    got = src.readinto(view)
    if got != len(view):
        raise CorruptImageError(f"{label}: data ended at byte {pos + got}")
    return bytes(view)


def _stream(src: FileStream, ranges: list[tuple[int, int]], parts: list[bytes] | None, tail: bytes,
            label: str, first: bytes) -> Iterator[bytes]:
    """The bytes of ``ranges`` of ``src`` (each preceded by its part header when multipart); ``first``
    is the first block, read before the status line went out."""
    view = memoryview(bytearray(BLOCK))
    try:
        for k, (a, b) in enumerate(ranges):
            if parts is not None:
                yield parts[k]
            pos = a
            if k == 0 and first:
                yield first
                pos += len(first)
            while pos <= b:
                n = min(BLOCK, b + 1 - pos)
                yield _read(src, pos, view[:n], label)
                pos += n
        if tail:
            yield tail
    except (Error, OSError) as e:
        log.warning("GET %s failed part way, connection dropped: %s", label, e)
        raise _Cut(str(e)) from None


class ReadOnlyGate(BaseMiddleware):  # type: ignore[misc]
    """403 for every method that is not a read; GET, HEAD and PROPFIND answered here."""

    def is_disabled(self) -> bool:
        return False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"].upper()
        if method not in READ_METHODS:
            return _text(start_response, "403 Forbidden", f"{method} refused: this WebDAV share is read-only")
        if method == "OPTIONS":
            return self._options(environ, start_response)
        tree: FileTree = self.config["imaging_utility.tree"]
        path = environ.get("PATH_INFO", "/") or "/"
        try:
            entry = resolve(tree, path)
            if entry is None or entry.type not in SERVED_TYPES:
                return _text(start_response, "404 Not Found", f"{path}: not found in the image")
            if method == "PROPFIND":
                return self._propfind(environ, start_response, tree, entry, path)
            if entry.type == "dir":
                return self._directory(environ, start_response, tree, entry, path, method)
            return self._file(environ, start_response, tree, entry, method)
        except Error as e:
            message = str(e) if path.rstrip("/") in str(e) else f"{path}: {e}"
            log.warning("%s %s", method, message)
            return _text(start_response, "500 Internal Server Error", message)

    def _options(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """wsgidav's OPTIONS (an empty body), its refusals answered here: without its ErrorPrinter, a
        refusal (a 404 below a file: ``/a.txt/x``) reached cheroot and the client got no answer at all."""
        started = False

        def start(*args: Any) -> Any:
            nonlocal started
            started = True
            return start_response(*args)

        try:
            return list(self.next_app(environ, start))
        except DAVError as e:
            if started:
                raise
            return _text(start_response, get_http_status_string(e), f"{environ.get('PATH_INFO', '')}: not found"
                         if e.value == 404 else f"OPTIONS refused ({get_http_status_string(e)})")

    def _directory(self, environ: dict[str, Any], start_response: StartResponse, tree: FileTree, entry: Entry,
                   path: str, method: str) -> Iterable[bytes]:
        if not path.endswith("/"):
            loc = environ.get("SCRIPT_NAME", "") + quote(path, safe="/") + "/"
            start_response("301 Moved Permanently", [("Location", loc), ("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        if method == "HEAD":
            return [b""]
        return listing(tree, entry, environ.get("SCRIPT_NAME", ""), path, dav_name)

    def _file(self, environ: dict[str, Any], start_response: StartResponse, tree: FileTree, entry: Entry,
              method: str) -> Iterable[bytes]:
        tag = propfind.etag(entry)
        modified = propfind.last_modified(entry)
        headers = [("Accept-Ranges", "bytes"), ("ETag", tag)]
        if modified:
            headers.append(("Last-Modified", modified))
        if tag in [t.strip() for t in environ.get("HTTP_IF_NONE_MATCH", "").split(",")]:
            start_response("304 Not Modified", headers)
            return [b""]
        src = tree.open(entry.path)  # before any header goes out: a damaged file is a clean 500
        size = src.size
        ctype = propfind.content_type(entry)
        if_range = environ.get("HTTP_IF_RANGE")
        header = environ.get("HTTP_RANGE") if if_range in (None, tag, modified) else None
        try:
            ranges = httprange.parse(header, size)
        except httprange.Unsatisfiable as e:
            return _text(start_response, "416 Range Not Satisfiable", f"{entry.path}: {e}",
                         [("Content-Range", f"bytes */{size}"), *headers])
        parts: list[bytes] | None = None
        tail = b""
        whole = ranges is None
        if ranges is None:
            ranges = [(0, size - 1)] if size else []
        first = b""
        if ranges and method == "GET":  # a file unreadable from its start is a clean error, not a cut body
            a, b = ranges[0]
            first = _read(src, a, memoryview(bytearray(min(BLOCK, b + 1 - a))), entry.path)
        if whole:
            start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(size)), *headers])
        elif len(ranges) == 1:
            a, b = ranges[0]
            start_response("206 Partial Content", [("Content-Type", ctype), ("Content-Length", str(b - a + 1)),
                                                   ("Content-Range", f"bytes {a}-{b}/{size}"), *headers])
        else:
            boundary = secrets.token_hex(16)
            pieces, tail, total = httprange.multipart_parts(ranges, size, ctype, boundary)
            parts = [p[0] for p in pieces]
            start_response("206 Partial Content", [
                ("Content-Type", f"multipart/byteranges; boundary={boundary}"), ("Content-Length", str(total)),
                *headers])
        if method == "HEAD":
            return [b""]
        return _stream(src, ranges, parts, tail, entry.path, first)

    def _propfind(self, environ: dict[str, Any], start_response: StartResponse, tree: FileTree, entry: Entry,
                  path: str) -> Iterable[bytes]:
        depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
        if depth not in ("0", "1"):
            body = propfind.FINITE_DEPTH
            start_response("403 Forbidden", [("Content-Type", "application/xml; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > propfind.MAX_BODY:
            return _text(start_response, "413 Content Too Large",
                         f"a PROPFIND body must be at most {propfind.MAX_BODY} bytes")
        try:
            mode, wanted = propfind.parse_request(environ["wsgi.input"].read(length) if length else b"")
        except propfind.BadRequest as e:
            return _text(start_response, "400 Bad Request", str(e))
        href = environ.get("SCRIPT_NAME", "").rstrip("/") + quote(path, safe="/")
        if entry.type == "dir" and not href.endswith("/"):
            href += "/"
        start_response("207 Multi-Status", [("Content-Type", "application/xml; charset=utf-8")])
        return propfind.responses(tree, entry, href, int(depth), mode, wanted, dav_name, SERVED_TYPES,
                                  lambda m: log.warning("%s", m))


class _Authenticator(HTTPAuthenticator):  # type: ignore[misc]
    """wsgidav's authenticator, with a malformed Basic header (not base64, not UTF-8, no ``:``) answered
    with the 401 challenge: it raised inside wsgidav, and the client got no answer at all."""

    def handle_basic_auth_request(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        value = environ.get("HTTP_AUTHORIZATION", "")[len("Basic "):].strip()
        try:
            decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
        except (ValueError, UnicodeError):  # binascii.Error is a ValueError
            decoded = ""
        if ":" not in decoded:
            return self.send_basic_auth_response(environ, start_response)
        return super().handle_basic_auth_request(environ, start_response)


class _PathGuard:
    """wsgidav's application, with the paths it cannot answer refused here with a complete 400.

    A path that is not UTF-8 once unquoted (``/%ff``) raised inside wsgidav: the client got no answer at
    all, the connection just closed.  A path that climbs above the share's root (``/../etc/passwd``) got
    a 400 whose body wsgidav never sent (its ``__call__`` is a generator and the refusal a ``return`` in
    it): the client, promised the body's length, waited on a kept-open connection until its own timeout.
    The names this server gives are always UTF-8 (``dav_name``), so no file is out of reach."""

    def __init__(self, app: WsgiDAVApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != "*":
            try:
                # as wsgidav reads it (WSGI hands the bytes over as Latin-1; hotfix re_encode_path_info)
                normalize_path(path.encode("iso-8859-1").decode("utf-8"))
            except (UnicodeError, DAVError) as e:
                why = "climbs above the share's root" if isinstance(e, DAVError) else "is not UTF-8"
                shown = path.encode("iso-8859-1", "replace").decode("utf-8", "backslashreplace")
                return _text(start_response, "400 Bad Request", f"{shown!r}: the path {why}")
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


def make_app(tree: FileTree, users: dict[str, str] | None = None) -> _PathGuard:
    """The WSGI application; ``users`` maps user name → password for HTTP basic auth (none: anonymous)."""
    mapping: Any = {"*": {u: {"password": p} for u, p in users.items()}} if users else {"*": True}
    config = {
        "provider_mapping": {"/": TreeProvider(tree)},
        "imaging_utility.tree": tree,
        "lock_storage": False,
        "property_manager": None,
        # No ErrorPrinter: it logs tracebacks and answers a failure after the status line with a second
        # one.  Failures are answered by ReadOnlyGate; anything else reaches cheroot (one log line).
        "middleware_stack": [_Authenticator, ReadOnlyGate, RequestResolver],
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
    return _PathGuard(WsgiDAVApp(config))


class _Server(wsgi.Server):  # type: ignore[misc]
    """cheroot with a one-line error log: a client that misbehaves or goes away is never a traceback."""

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        line = str(msg).strip().splitlines()[0] if str(msg).strip() else "error"
        if "_Cut(" in line:
            return  # already logged, with the file's name, where the body was cut
        log.log(level if level >= logging.WARNING else logging.DEBUG, "WebDAV: %s", line)
        if traceback:
            log.debug("WebDAV: details of the error above", exc_info=True)  # shown with --verbose only


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
    """cheroot serving ``make_app(tree, users)`` on ``host:port`` (port 0: any free port).

    ``threads`` requests are served at once; further connections wait in cheroot's queue.  A
    connection that sends nothing for ``timeout`` seconds is closed, so idle clients cannot hold the
    threads."""

    def __init__(self, tree: FileTree, *, host: str = "127.0.0.1", port: int = 18081,
                 users: dict[str, str] | None = None, threads: int = 8, timeout: int = 60) -> None:
        limit_malloc_arenas()
        self.server = _Server((host, port), make_app(tree, users), numthreads=threads,
                              server_name="imaging-utility", timeout=timeout)
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
