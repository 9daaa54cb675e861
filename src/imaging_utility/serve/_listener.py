"""A threaded stream listener (TCP or Unix socket) shared by the NBD and IMDPROXY servers.

Not ``socketserver``: its ``shutdown()`` hangs when ``serve_forever()`` never ran, and it cannot drop
open connections.  Here the socket is bound in the constructor (so ``port=0`` resolves at once),
``serve_forever()`` runs one daemon thread per connection, and ``shutdown()`` from any thread stops
accepting and shuts down every open connection.
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Self

from ..errors import Error, PermissionDeniedError, UsageError

log = logging.getLogger(__name__)

SEND_TIMEOUT = 120  # seconds a blocked send may wait for a client that stopped reading
_TIMEVAL = struct.Struct("ll")


def bind_error(host: str, port: int, e: OSError) -> Error:
    """The one-line error for a listening address that cannot be bound."""
    where = f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return UsageError(f"cannot listen on {where}: address already in use (another server is on that port); "
                          "choose another with --port")
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(f"cannot listen on {where}: {e.strerror} (ports below 1024 need root)")
    if e.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"cannot listen on {where}: no such address on this machine; check --host")
    return UsageError(f"cannot listen on {where}: {e.strerror or e} (try another --host or --port)")


class Listener(abc.ABC):
    """Subclasses implement ``handle(sock)``; it runs in its own thread and must not raise."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None,
                 max_connections: int = 128) -> None:
        self.max_connections = max_connections
        self.unix_path = unix_path
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._sock = self._bind_unix(unix_path) if unix_path else self._bind_tcp(host, port)
        self._sock.listen(64)
        self.address: tuple[str, int] | str = unix_path or self._sock.getsockname()[:2]

    @staticmethod
    def _bind_tcp(host: str, port: int) -> socket.socket:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise UsageError(f"cannot resolve listen address {host!r}: {e.strerror}") from None
        family, stype, proto, _name, addr = infos[0]
        sock = socket.socket(family, stype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            sock.close()
            raise bind_error(host, port, e) from None
        return sock

    @staticmethod
    def _bind_unix(path: str) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
            else:
                raise UsageError(f"cannot listen on {path}: it exists and is not a socket")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise UsageError(f"cannot listen on Unix socket {path}: {e.strerror}") from None
        return sock

    def fileno(self) -> int:
        """The listening socket's descriptor (helper processes close their copy)."""
        return self._sock.fileno()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    @abc.abstractmethod
    def handle(self, sock: socket.socket) -> None:
        """Serve one client connection until it ends."""

    def serve_forever(self) -> None:
        """Accept connections until ``shutdown()``; each runs ``handle`` in a daemon thread."""
        self._stopped.clear()
        try:
            while not self._closing.is_set():
                try:
                    conn, _addr = self._sock.accept()
                except OSError as e:
                    if self._closing.is_set():
                        break
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept failed: %s; retrying", e.strerror)
                        time.sleep(0.1)
                    continue
                with self._lock:
                    if self._closing.is_set() or len(self._conns) >= self.max_connections:
                        log.warning("refusing connection: %d connections open", len(self._conns))
                        conn.close()
                        continue
                    self._conns.add(conn)
                threading.Thread(target=self._run, args=(conn,), daemon=True,
                                 name=f"{type(self).__name__}-conn").start()
        finally:
            self._stopped.set()

    def _run(self, conn: socket.socket) -> None:
        try:
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(SEND_TIMEOUT, 0))
            self.handle(conn)
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection handler failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop open connections, remove the Unix socket; idempotent, any thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        except OSError:
            pass
        self._stopped.wait(timeout)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
