"""A threaded stream listener (TCP or Unix socket) shared by the NBD and IMDPROXY servers.

Not ``socketserver``: its ``shutdown()`` hangs when ``serve_forever()`` never ran, and it cannot drop
open connections.  Here the socket is bound in the constructor (so ``port=0`` resolves at once),
``serve_forever()`` runs one daemon thread per connection, and ``shutdown()`` from any thread stops
accepting and shuts down every open connection.

The connection limit never starves new clients: when ``max_connections`` are open and another
client connects, the TCP connection that has sent nothing for longest is closed to make room if it
has been silent for ``idle_timeout`` seconds or more (the kernel's ``tcpi_last_data_recv`` says
how long, whichever process serves it); otherwise the new client gets a clear refusal in its own
protocol (``refuse``), never a silent hang.  Connections are not closed for idleness while there is
room: a kernel NBD mount may rightly stay idle for hours.
"""

from __future__ import annotations

import abc
import ctypes
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
REFUSE_TIMEOUT = 5.0  # seconds a refused client gets to read why
MAX_REFUSING = 16  # refusals being explained at once; more are closed straight away
IDLE_TIMEOUT = 300.0
_TIMEVAL = struct.Struct("ll")
_TCP_INFO_LEN = 104
_TCPI_LAST_DATA_RECV = struct.Struct("=I")  # struct tcp_info at offset 52: ms since data last arrived


M_ARENA_MAX = -8  # mallopt(3)
MALLOC_ARENAS = 1


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for this process (and the helpers it forks).

    Threads that contend for malloc get arenas of their own, up to 8 per CPU, and a server runs a
    thread per connection and participant: each arena keeps the high-water mark of the 1 MiB buffers
    and decoded chunks its threads once held, in fragments it never gives back, so memory climbs round
    after round of clients until every arena is full (the more CPUs, the higher).  Measured on 2 CPUs,
    64 clients x 13 rounds of pipelined reads over NBD with helper processes: 405 -> 492 MB and still
    climbing without this; with one arena, 241 -> 264 MB, flat from the third round.  Allocations are
    made with the interpreter lock held anyway, so one arena costs nothing measurable.  No-op without
    glibc."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``; no-op elsewhere).

    The CLI keeps freed chunk-sized buffers in the heap (``cli.main._tune_malloc``) and glibc trims only
    the top of the heap by itself, so a server's memory otherwise stays at the high-water mark of its
    busiest moment, which differs from one burst of clients to the next.  Called when a process's last
    connection ends: an idle server holds only its caches.  Measured on 2 CPUs, 64 pipelining clients
    with helper processes, RSS after each of five rounds: 139 -> 145 -> 150 -> 150 -> 151 MB and
    141 -> 151 -> 151 -> 159 -> 159 MB without it (one CI run: 131 -> 137 -> 166), 99 -> 109 -> 110 -> 111
    -> 111 MB with it, twice."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def idle_seconds(conn: socket.socket) -> float | None:
    """How long a TCP peer has sent nothing, from the kernel; ``None`` for other sockets."""
    if conn.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < 56:
        return None
    return float(_TCPI_LAST_DATA_RECV.unpack_from(info, 52)[0]) / 1000


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
                 max_connections: int = 128, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.unix_path = unix_path
        limit_malloc_arenas()
        self._evicted: set[socket.socket] = set()  # shut down to make room, their handlers not yet done
        self._refusing = threading.BoundedSemaphore(MAX_REFUSING)
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

    def refuse(self, sock: socket.socket, why: str) -> None:
        """Tell a client it cannot be served (``why``), in the protocol's own terms; the default just
        closes.  Runs in its own thread with a short timeout on ``sock``; must not raise."""
        del sock, why  # nothing to say beyond closing

    def _make_room(self) -> bool:
        """Close the connection silent for longest if it has been for ``idle_timeout``; under the lock."""
        if self.idle_timeout <= 0:
            return False
        idlest, most = None, -1.0
        for conn in self._conns - self._evicted:
            idle = idle_seconds(conn)
            if idle is not None and idle > most:
                idlest, most = conn, idle
        if idlest is None or most < self.idle_timeout:
            return False
        log.info("closing a connection idle for %.0f s to make room for a new client", most)
        self._evicted.add(idlest)
        try:
            idlest.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _refuse(self, conn: socket.socket, why: str) -> None:
        log.warning("refusing a connection: %s", why)
        if not self._refusing.acquire(blocking=False):
            conn.close()
            return

        def explain() -> None:
            try:
                conn.settimeout(REFUSE_TIMEOUT)
                self.refuse(conn, why)
            except Exception as e:  # the refused client's problem, not the server's
                log.debug("refusal not delivered: %s", e)
            finally:
                conn.close()
                self._refusing.release()

        threading.Thread(target=explain, daemon=True, name=f"{type(self).__name__}-refuse").start()

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
                    if self._closing.is_set():
                        conn.close()
                        continue
                    full = len(self._conns) - len(self._evicted) >= self.max_connections
                    if full and not self._make_room():
                        why = (f"too many connections: {self.max_connections} are open and none has been idle "
                               f"for {self.idle_timeout:g} s; try again later")
                        self._refuse(conn, why)
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
                self._evicted.discard(conn)
                idle = not self._conns
            conn.close()
            if idle:
                release_free_memory()

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
