"""A read-only NBD server for ``BlockSource`` exports: fixed newstyle, structured replies, base:allocation.

Spec: NetworkBlockDevice/nbd ``doc/proto.md`` (commit 89ba7b5); digest and client notes in
``reference/nbd-protocol.md``.  Each connection is served by participants taking turns: ``threads`` threads
of this process and, with ``processes`` > 1, one thread in each helper process (``helpers.py``).  A
participant takes the receive lock, reads one batch (what a ``recv`` of up to ``BATCH_BYTES`` brings,
completed to whole requests, so no byte of a request is left for another participant to misread),
releases the lock and handles the batch while another participant reads the next one.  A client that
pipelines (``fio`` at iodepth 16, ``nbdcopy``, the kernel) so gets chunks decoded in parallel and replies
out of order, as the protocol allows (replies carry the request's cookie).  The small replies of a batch
are held and written together with one ``sendmsg``; a large one first flushes those held, so the chunks
of one structured reply never change order.  Replies are written under the connection's send lock: a
structured reply chunk, or a whole simple reply, is never interleaved with another.  Memory is bounded:
each participant has one read buffer of at most ``PIECE`` bytes (larger READs go out in pieces) and holds
at most ``HOLD_LIMIT`` bytes of replies.

Error policy: a ``CorruptImageError`` or ``OSError`` from the source fails that one request with EIO and
the connection stays up; the only exception is a simple-reply READ larger than ``PIECE`` whose later piece
fails after the header went out — the protocol then requires a hard disconnect.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Protocol

from ...blocks import BlockSource
from ...errors import CorruptImageError, UsageError
from ...extents import ExtentKind
from .._listener import IDLE_TIMEOUT, Listener
from . import c_nbd as c
from .helpers import HelperPool, Slot
from .negotiate import MAX_OPTION_LENGTH, META_CONTEXT_ID, Disconnect, Negotiation

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 28  # at most this many bytes of requests per recv: 4 READs (a cut request is completed)
HOLD_BYTES = 64 * 1024  # replies up to this size are held and sent together at the end of their batch...
HOLD_LIMIT = 256 * 1024  # ...unless this much is held already (many small chunks of one large READ)
HOLD_COUNT = 256  # ...or this many pieces (sendmsg takes at most IOV_MAX = 1024)
LOCK_POLL = 1.0  # seconds between checks of "ended" while waiting for a connection lock
PIECE = 1024 * 1024  # largest read buffer per thread; also the largest DF read
THREADS = min(4, max(2, os.cpu_count() or 1))  # threads serving one connection (more only wait on the GIL)
MAX_STATUS_EXTENTS = 64 * 1024
HOLE_KINDS = (ExtentKind.ZERO, ExtentKind.UNALLOCATED)
# UNALLOCATED was never read and is not stored: a hole that reads as zeroes.  ZERO is stored zeroes: we say
# "reads as zero" without "hole", which is true, and nbdcopy/qemu-img skip reading both kinds alike.
STATUS_FLAGS = {
    ExtentKind.DATA: 0,
    ExtentKind.UNREADABLE: 0,
    ExtentKind.ZERO: c.NBD_STATE_ZERO,
    ExtentKind.UNALLOCATED: c.NBD_STATE_HOLE | c.NBD_STATE_ZERO,
}


class Flag(Protocol):
    """A connection's "ended" flag: a ``threading.Event``, or ``helpers.SharedFlag`` across processes."""

    def is_set(self) -> bool: ...
    def set(self) -> None: ...


class NbdServer(Listener):
    """Serve ``exports`` (name → source; ``""`` is the default export) read-only over TCP or a Unix socket.

    ``host``/``port`` (``port=0`` picks a free port) or ``unix_path``.  Binding happens in the
    constructor, so ``address`` is valid at once; ``serve_forever()`` accepts until ``shutdown()``
    (callable from any thread), which also drops open connections.
    """

    def __init__(self, exports: dict[str, BlockSource], *, host: str = "127.0.0.1", port: int = 10809,
                 unix_path: str | None = None, descriptions: dict[str, str] | None = None,
                 max_connections: int = 128, handshake_timeout: float = 30.0, threads: int | None = None,
                 processes: int = 1, idle_timeout: float = IDLE_TIMEOUT) -> None:
        if not exports:
            raise UsageError("NBD server needs at least one export")
        for name in exports:
            if len(name.encode()) > 4096:
                raise UsageError(f"NBD export name longer than 4096 bytes: {name[:40]!r}...")
        self.exports = dict(exports)
        self.descriptions = dict(descriptions or {})
        self.handshake_timeout = handshake_timeout
        super().__init__(host=host, port=port, unix_path=unix_path, max_connections=max_connections,
                         idle_timeout=idle_timeout)
        self.threads = threads or (THREADS if processes <= 1 else 1)
        self.helpers: HelperPool | None = None
        if processes > 1:
            self.helpers = HelperPool(processes - 1, max_connections, self._serve_share,
                                      close_in_child=[self.fileno()])

    def handle(self, sock: socket.socket) -> None:
        _Connection(self, sock).run()

    def refuse(self, sock: socket.socket, why: str) -> None:
        """Negotiate just far enough to say ``why``: every option is answered NBD_REP_ERR_POLICY with
        that text, up to the client's GO (nbdinfo then says "Operation not permitted", qemu-img prints
        the text); EXPORT_NAME cannot carry an error, so that client only sees the connection close."""
        message = why.encode()[:4096]
        sock.sendall(c.c_server_greeting.pack(c.NBDMAGIC, c.IHAVEOPT,
                                              c.NBD_FLAG_FIXED_NEWSTYLE | c.NBD_FLAG_NO_ZEROES))
        _recv_exact(sock, 4)
        for _ in range(16):
            magic, opt, length = c.c_option.unpack(_recv_exact(sock, c.c_option.size))
            if magic != c.IHAVEOPT or length > MAX_OPTION_LENGTH or opt == c.NBD_OPT_EXPORT_NAME:
                return
            _recv_exact(sock, length)
            if opt == c.NBD_OPT_ABORT:
                sock.sendall(c.c_option_reply.pack(c.REPLY_MAGIC, opt, c.NBD_REP_ACK, 0))
                return
            sock.sendall(c.c_option_reply.pack(c.REPLY_MAGIC, opt, c.NBD_REP_ERR_POLICY, len(message)) + message)
            if opt == c.NBD_OPT_GO:  # INFO and LIST may be followed by a GO, which gets the same answer
                break
        # Closing with the client's next option unread would reset the connection and could destroy the
        # reply before it is read: end our side, then take what the client still sends until it closes.
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass

    def _serve_share(self, sock: socket.socket, state: dict[str, Any], slot: Slot) -> None:
        """In a helper process: serve a share of a connection the main process negotiated."""
        conn = _Connection(self, sock)
        conn.structured, conn.can_status = bool(state["structured"]), bool(state["can_status"])
        conn.source = self.exports[state["export"]]
        conn.recv_lock, conn.send_lock, conn.ended = slot.recv_lock, slot.send_lock, slot.ended
        conn.participate()

    def shutdown(self, timeout: float = 5.0) -> None:
        super().shutdown(timeout)
        if self.helpers is not None:
            self.helpers.close()

    def transmission_flags(self, structured: bool) -> int:
        flags = (c.NBD_FLAG_HAS_FLAGS | c.NBD_FLAG_READ_ONLY | c.NBD_FLAG_SEND_FLUSH
                 | c.NBD_FLAG_CAN_MULTI_CONN | c.NBD_FLAG_SEND_CACHE)
        return flags | c.NBD_FLAG_SEND_DF if structured else flags


class _Connection(Negotiation):
    def __init__(self, server: NbdServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.structured = False
        self.meta_export: str | None = None  # export the base:allocation context was selected for
        self.source: BlockSource | None = None
        self.can_status = False
        self.send_lock: Any = threading.Lock()  # or a process-shared one (helpers.py)
        self.recv_lock: Any = threading.Lock()
        self.ended: Flag = threading.Event()  # set once DISC was read or the connection failed; every thread stops
        self.local = threading.local()

    def run(self) -> None:
        try:
            self.sock.settimeout(self.server.handshake_timeout)
            name = self.handshake()
            if name is None:
                return
            self.sock.settimeout(None)
            self.transmission(name)
        except (Disconnect, OSError) as e:
            log.debug("NBD connection closed: %s", e or type(e).__name__)

    # --- socket helpers ---------------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes.  Unbuffered on purpose: a byte read ahead would belong to no thread."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise Disconnect("client closed the connection")
            got += k
        return bytes(buf)

    def send(self, *parts: bytes | bytearray | memoryview) -> None:
        held: list[bytes] | None = getattr(self.local, "held", None)
        if held is not None:
            n = sum(len(p) for p in parts)
            if n <= HOLD_BYTES and self.local.held_bytes + n <= HOLD_LIMIT and len(held) < HOLD_COUNT:
                held.append(b"".join(parts))  # sent with the batch's other replies: one system call
                self.local.held_bytes += n
                return
            parts = (*self.take_held(), *parts)  # what was held goes first: a reply's chunks stay in order
        self.take(self.send_lock)
        try:
            self.send_unlocked(*parts)
        finally:
            self.send_lock.release()

    def take_held(self) -> list[bytes]:
        held: list[bytes] | None = getattr(self.local, "held", None)
        if not held:
            return []
        self.local.held = []
        self.local.held_bytes = 0
        return held

    def take(self, lock: Any) -> None:
        """Acquire one of the connection's locks; give up when the connection ended meanwhile (a helper
        process that died holding it)."""
        while not lock.acquire(timeout=LOCK_POLL):
            if self.ended.is_set():
                raise Disconnect("connection ended")

    def send_unlocked(self, *parts: bytes | bytearray | memoryview) -> None:
        sent = self.sock.sendmsg(parts)
        if sent == sum(len(p) for p in parts):
            return
        for part in parts:  # a partial send: finish the rest piece by piece
            if sent >= len(part):
                sent -= len(part)
                continue
            self.sock.sendall(memoryview(part)[sent:])
            sent = 0

    # --- transmission -----------------------------------------------------------------------------
    def transmission(self, name: str) -> None:
        self.source = self.server.exports[name]
        self.can_status = self.structured and self.meta_export == name
        pool = self.server.helpers
        slot = pool.share(self.sock, {"export": name, "structured": self.structured,
                                      "can_status": self.can_status}) if pool else None
        if slot is None:
            return self.participate()
        assert pool is not None
        self.recv_lock, self.send_lock, self.ended = slot.recv_lock, slot.send_lock, slot.ended
        try:
            self.participate()
        finally:
            pool.release(slot)
        return None

    def participate(self) -> None:
        """Serve this connection with ``server.threads`` threads of this process."""
        followers = [threading.Thread(target=self.serve_requests, daemon=True, name="nbd-conn-follower")
                     for _ in range(self.server.threads - 1)]
        for t in followers:
            t.start()
        try:
            self.serve_requests()
        finally:
            for t in followers:
                t.join()

    def serve_requests(self) -> None:
        """Take turns reading a batch of requests, then handle them; return at DISC or when the
        connection ends.  A batch is what one ``recv`` brings, completed to whole requests, so no bytes of
        a request stay behind for another thread (or process) to misread."""
        try:
            while True:
                self.take(self.recv_lock)
                try:
                    if self.ended.is_set():
                        return
                    batch = self.next_batch()
                finally:
                    self.recv_lock.release()
                self.local.held = [] if len(batch) > 1 else None
                self.local.held_bytes = 0
                try:
                    for request in batch:
                        self.handle(*request)
                finally:
                    held, self.local.held = self.local.held, None
                    if held:
                        self.send(*held)
                if self.ended.is_set():
                    return
        except (Disconnect, OSError) as e:
            if not self.ended.is_set():
                log.debug("NBD connection closed: %s", e or type(e).__name__)
            self.end()
        except Exception:  # a bug in one request must not leave the other threads waiting
            log.exception("NBD request failed")
            self.end()

    def end(self) -> None:
        """Stop every thread of this connection: the one blocked in recv wakes up on the shut socket."""
        self.ended.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def next_batch(self) -> list[tuple[int, int, int, int, int]]:
        """The requests (flags, cmd, cookie, offset, length) of the next ``recv``, up to DISC (which sets
        ``ended``).  WRITE payloads are read and dropped here."""
        data = self.sock.recv(BATCH_BYTES)
        if not data:
            raise Disconnect("client closed the connection")
        out: list[tuple[int, int, int, int, int]] = []
        pos = 0
        size = c.c_request.size
        while pos < len(data):
            if len(data) - pos < size:  # finish the request the recv cut
                data = data[pos:] + self.recv(size - (len(data) - pos))
                pos = 0
            magic, flags, cmd, cookie, offset, length = c.c_request.unpack_from(data, pos)
            pos += size
            if magic != c.NBD_REQUEST_MAGIC:
                raise Disconnect(f"bad request magic {magic:#x}")
            if cmd == c.NBD_CMD_WRITE:
                have = min(length, len(data) - pos)
                pos += have
                self.drain(length - have)
            if self.server.closing:
                self.error(cookie, c.NBD_ESHUTDOWN, "server is shutting down")
                raise Disconnect("server shutdown")
            if cmd == c.NBD_CMD_DISC:
                self.ended.set()
                break
            out.append((flags, cmd, cookie, offset, length))
        return out

    def handle(self, flags: int, cmd: int, cookie: int, offset: int, length: int) -> None:
        assert self.source is not None
        in_range = offset + length <= self.source.size
        if cmd == c.NBD_CMD_READ:
            self.read(cookie, flags, offset, length, in_range)
        elif cmd == c.NBD_CMD_BLOCK_STATUS:
            self.block_status(cookie, flags, offset, length, in_range)
        elif cmd in (c.NBD_CMD_WRITE, c.NBD_CMD_TRIM, c.NBD_CMD_WRITE_ZEROES):
            self.error(cookie, c.NBD_EPERM, "export is read-only")
        elif cmd in (c.NBD_CMD_FLUSH, c.NBD_CMD_CACHE):
            if flags & ~c.NBD_CMD_FLAG_FUA or (cmd == c.NBD_CMD_CACHE and not in_range):
                self.error(cookie, c.NBD_EINVAL, "bad flags or range")
            else:
                self.send(c.c_simple_reply.pack(c.NBD_SIMPLE_REPLY_MAGIC, 0, cookie))
        else:
            self.error(cookie, c.NBD_EINVAL, f"unknown command {cmd}")

    def buffer(self, n: int) -> memoryview:
        """This thread's read buffer, grown to ``min(n, PIECE)`` bytes."""
        n = min(n, PIECE)
        buf: bytearray | None = getattr(self.local, "buf", None)
        if buf is None or len(buf) < n:
            buf = self.local.buf = bytearray(max(n, 64 * 1024))
        return memoryview(buf)

    def drain(self, length: int) -> None:
        while length:
            length -= len(self.recv(min(length, 64 * 1024)))

    def chunk(self, cookie: int, ctype: int, done: bool, *payload: bytes | bytearray | memoryview) -> None:
        hdr = c.c_structured_reply.pack(c.NBD_STRUCTURED_REPLY_MAGIC, c.NBD_REPLY_FLAG_DONE if done else 0,
                                        ctype, cookie, sum(len(p) for p in payload))
        self.send(hdr, *payload)

    def error(self, cookie: int, err: int, message: str, offset: int | None = None) -> None:
        if not self.structured:
            return self.send(c.c_simple_reply.pack(c.NBD_SIMPLE_REPLY_MAGIC, err, cookie))
        msg = message.encode()[:4096]
        if offset is None:
            return self.chunk(cookie, c.NBD_REPLY_TYPE_ERROR, True, c.c_error_chunk.pack(err, len(msg)), msg)
        return self.chunk(cookie, c.NBD_REPLY_TYPE_ERROR_OFFSET, True,
                          c.c_error_chunk.pack(err, len(msg)), msg, c.c_offset.pack(offset))

    def fill(self, offset: int, view: memoryview) -> str | None:
        """Read into ``view``; returns an error message instead of raising for a source failure."""
        assert self.source is not None
        try:
            self.source.readinto_at(offset, view)
        except (CorruptImageError, OSError) as e:
            log.warning("NBD read of %d bytes at %d failed: %s", len(view), offset, e)
            return str(e) or type(e).__name__
        return None

    def read(self, cookie: int, flags: int, offset: int, length: int, in_range: bool) -> None:
        df = bool(flags & c.NBD_CMD_FLAG_DF)
        if flags & ~(c.NBD_CMD_FLAG_FUA | c.NBD_CMD_FLAG_DF) or (df and not self.structured):
            return self.error(cookie, c.NBD_EINVAL, f"unsupported READ flags {flags:#x}")
        if length > c.MAX_PAYLOAD:
            return self.error(cookie, c.NBD_EINVAL, f"READ of {length} bytes exceeds {c.MAX_PAYLOAD}")
        if not in_range:
            return self.error(cookie, c.NBD_EINVAL, "READ beyond the end of the export")
        if df and length > PIECE:
            return self.error(cookie, c.NBD_EOVERFLOW, f"DF READ larger than {PIECE} bytes")
        if not self.structured:
            return self.read_simple(cookie, offset, length)
        if length == 0:
            return self.chunk(cookie, c.NBD_REPLY_TYPE_NONE, True)
        extents = [(offset, length, ExtentKind.DATA)] if df else self.extents(offset, length)
        if extents is None:
            return self.error(cookie, c.NBD_EIO, "reading the allocation map failed")
        end = offset + length
        buf = self.buffer(length)
        for start, n, kind in extents:
            if kind in HOLE_KINDS:
                self.chunk(cookie, c.NBD_REPLY_TYPE_OFFSET_HOLE, start + n == end,
                           c.c_offset_hole.pack(start, n))
                continue
            pos = start
            while pos < start + n:
                view = buf[:min(PIECE, start + n - pos)]
                failed = self.fill(pos, view)
                if failed:
                    return self.error(cookie, c.NBD_EIO, failed, offset=pos)
                self.chunk(cookie, c.NBD_REPLY_TYPE_OFFSET_DATA, pos + len(view) == end,
                           c.c_offset.pack(pos), view)
                pos += len(view)
        return None

    def read_simple(self, cookie: int, offset: int, length: int) -> None:
        buf = self.buffer(length)
        view = buf[:min(length, PIECE)]
        if self.fill(offset, view):
            return self.error(cookie, c.NBD_EIO, "read failed")
        if length <= PIECE:
            return self.send(c.c_simple_reply.pack(c.NBD_SIMPLE_REPLY_MAGIC, 0, cookie), view)
        self.take(self.send_lock)  # a simple reply's data cannot be interleaved with any other reply
        try:
            self.send_unlocked(*self.take_held(), c.c_simple_reply.pack(c.NBD_SIMPLE_REPLY_MAGIC, 0, cookie),
                               view)
            pos = offset + len(view)
            while pos < offset + length:
                view = buf[:min(PIECE, offset + length - pos)]
                if self.fill(pos, view):
                    raise Disconnect(f"read failed at {pos} after a simple reply header was sent")
                self.send_unlocked(view)
                pos += len(view)
        finally:
            self.send_lock.release()
        return None

    def extents(self, offset: int, length: int) -> list[tuple[int, int, ExtentKind]] | None:
        """``source.extents`` clipped to the range with gaps filled as DATA; None if the source failed."""
        assert self.source is not None
        try:
            reported = self.source.extents(offset, length)
        except (CorruptImageError, OSError, ValueError) as e:
            log.warning("NBD extents of [%d, +%d) failed: %s", offset, length, e)
            return None
        out: list[tuple[int, int, ExtentKind]] = []
        pos, end = offset, offset + length
        for ext in reported:
            start, stop = max(ext.offset, pos), min(ext.offset + ext.length, end)
            if stop <= start:
                continue
            if start > pos:
                out.append((pos, start - pos, ExtentKind.DATA))
            if out and out[-1][2] is ext.kind:
                out[-1] = (out[-1][0], out[-1][1] + stop - start, ext.kind)
            else:
                out.append((start, stop - start, ext.kind))
            pos = stop
        if pos < end:
            out.append((pos, end - pos, ExtentKind.DATA))
        return out

    def block_status(self, cookie: int, flags: int, offset: int, length: int, in_range: bool) -> None:
        if not self.can_status:
            return self.error(cookie, c.NBD_EINVAL, "base:allocation was not negotiated for this export")
        if flags & ~(c.NBD_CMD_FLAG_REQ_ONE | c.NBD_CMD_FLAG_FUA) or not length or not in_range:
            return self.error(cookie, c.NBD_EINVAL, "bad BLOCK_STATUS flags or range")
        extents = self.extents(offset, length)
        if extents is None:
            return self.error(cookie, c.NBD_EIO, "reading the allocation map failed")
        pairs: list[tuple[int, int]] = []
        for _start, n, kind in extents:
            status = STATUS_FLAGS[kind]
            if pairs and pairs[-1][1] == status and pairs[-1][0] + n <= c.MAX_EXTENT:
                pairs[-1] = (pairs[-1][0] + n, status)
                continue
            while n > c.MAX_EXTENT:
                pairs.append((c.MAX_EXTENT, status))
                n -= c.MAX_EXTENT
            pairs.append((n, status))
        limit = 1 if flags & c.NBD_CMD_FLAG_REQ_ONE else MAX_STATUS_EXTENTS
        pairs = pairs[:limit]
        payload = bytearray(4 + 8 * len(pairs))
        c.c_u32.pack_into(payload, 0, META_CONTEXT_ID)
        for i, (n, status) in enumerate(pairs):
            c.c_block_status_extent.pack_into(payload, 4 + 8 * i, n, status)
        return self.chunk(cookie, c.NBD_REPLY_TYPE_BLOCK_STATUS, True, payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise Disconnect("client closed the connection")
        buf += got
    return bytes(buf)
