"""Read-only IMDPROXY server: the ImDisk / Arsenal Image Mounter proxy protocol over TCP or a Unix socket.

Spec (there is no prose spec; the headers and reference code are it): LTRData/ImDisk ``inc/imdproxy.h``
and ``devio/devio.c`` (commit da6a876), ArsenalRecon/Arsenal-Image-Mounter ``Devio`` (commit 1dd6610);
digest in ``reference/imdproxy.md``.  Every field is a little-endian u64.  The client drives: an 8-byte
request code, then the rest of that request, then one response.  INFO, READ and CLOSE are served;
WRITE is drained and answered with EBADF (as devio does for a read-only image); anything else drops the
connection (as AIM does: the client cannot resynchronise either way).
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import struct

from ..blocks import BlockSource
from ..errors import CorruptImageError
from ._listener import IDLE_TIMEOUT, Listener

log = logging.getLogger(__name__)

# --- wire structures (little-endian u64 fields) ---------------------------------------------------
IMDPROXY_REQ_NULL = 0
IMDPROXY_REQ_INFO = 1
IMDPROXY_REQ_READ = 2
IMDPROXY_REQ_WRITE = 3
IMDPROXY_REQ_CONNECT = 4
IMDPROXY_REQ_CLOSE = 5
IMDPROXY_REQ_UNMAP = 6
IMDPROXY_REQ_ZERO = 7
IMDPROXY_REQ_SCSI = 8
IMDPROXY_REQ_SHARED = 9

IMDPROXY_FLAG_RO = 0x01
IMDPROXY_FLAG_SUPPORTS_UNMAP = 0x02
IMDPROXY_FLAG_SUPPORTS_ZERO = 0x04
IMDPROXY_FLAG_SUPPORTS_SCSI = 0x08
IMDPROXY_FLAG_SUPPORTS_SHARED = 0x10
IMDPROXY_FLAG_KEEP_OPEN = 0x20

c_request_code = struct.Struct("<Q")
c_info_resp = struct.Struct("<QQQ")  # file_size, req_alignment, flags
c_rw_req = struct.Struct("<QQ")  # offset, length (after the request code)
c_rw_resp = struct.Struct("<QQ")  # errorno, length

DEFAULT_PORT = 9000
REQ_ALIGNMENT = 1  # we serve any offset/length; ImDisk accepts 1..512
PIECE = 1024 * 1024  # read buffer per connection
MAX_READ = 64 * 1024 * 1024  # a longer READ gets a short reply; the driver asks again for the rest
MAX_WRITE_DRAIN = 64 * 1024 * 1024  # a longer WRITE payload is not drained: the connection is dropped


class _Disconnect(Exception):
    pass


class ImdproxyServer(Listener):
    """Serve one ``BlockSource`` read-only; a thread per client, many clients at once.

    Bound in the constructor (``port=0`` picks a free port; ``unix_path`` for a Unix socket);
    ``serve_forever()`` until ``shutdown()``.
    """

    def __init__(self, source: BlockSource, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 unix_path: str | None = None, max_connections: int = 64,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.source = source
        super().__init__(host=host, port=port, unix_path=unix_path, max_connections=max_connections,
                         idle_timeout=idle_timeout)

    def handle(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb", buffering=64 * 1024)
        assert isinstance(rfile, io.BufferedIOBase)
        try:
            self._serve(sock, rfile)
        except (_Disconnect, OSError) as e:
            log.debug("IMDPROXY connection closed: %s", e or type(e).__name__)
        finally:
            rfile.close()

    def _serve(self, sock: socket.socket, rfile: io.BufferedIOBase) -> None:
        def recv(n: int) -> bytes:
            data: bytes | None = rfile.read(n)
            if data is None or len(data) != n:
                raise _Disconnect("client closed the connection")
            return data

        size = self.source.size
        buf = bytearray(min(PIECE, max(size, 1)))
        while True:
            try:
                (code,) = c_request_code.unpack(recv(8))
            except _Disconnect:
                return  # EOF between requests: a client that just went away
            if code == IMDPROXY_REQ_CLOSE or self.closing:
                return
            if code == IMDPROXY_REQ_NULL:
                continue
            if code == IMDPROXY_REQ_INFO:
                sock.sendall(c_info_resp.pack(size, REQ_ALIGNMENT, IMDPROXY_FLAG_RO))
            elif code == IMDPROXY_REQ_READ:
                offset, length = c_rw_req.unpack(recv(c_rw_req.size))
                self._read(sock, buf, offset, length)
            elif code == IMDPROXY_REQ_WRITE:
                _offset, length = c_rw_req.unpack(recv(c_rw_req.size))
                if length > MAX_WRITE_DRAIN:
                    raise _Disconnect(f"WRITE payload of {length} bytes is too large to drain")
                while length:
                    length -= len(recv(min(length, 64 * 1024)))
                sock.sendall(c_rw_resp.pack(errno.EBADF, 0))
            else:
                raise _Disconnect(f"unsupported IMDPROXY request code {code}")

    def _read(self, sock: socket.socket, buf: bytearray, offset: int, length: int) -> None:
        size = self.source.size
        if offset > size:
            sock.sendall(c_rw_resp.pack(errno.EINVAL, 0))
            return
        total = min(length, size - offset, MAX_READ)
        first = memoryview(buf)[:min(total, len(buf))]
        if not self._fill(offset, first):
            sock.sendall(c_rw_resp.pack(errno.EIO, 0))
            return
        _send(sock, c_rw_resp.pack(0, total), first)
        pos = offset + len(first)
        while pos < offset + total:
            view = memoryview(buf)[:min(len(buf), offset + total - pos)]
            if not self._fill(pos, view):
                raise _Disconnect(f"read failed at {pos} after the response header was sent")
            sock.sendall(view)
            pos += len(view)

    def _fill(self, offset: int, view: memoryview) -> bool:
        try:
            self.source.readinto_at(offset, view)
        except (CorruptImageError, OSError) as e:
            log.warning("IMDPROXY read of %d bytes at %d failed: %s", len(view), offset, e)
            return False
        return True


def _send(sock: socket.socket, *parts: bytes | memoryview) -> None:
    """``sendall`` of several buffers in one ``sendmsg`` (one packet for a small READ), partial-send safe."""
    sent = sock.sendmsg(parts)
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        sock.sendall(memoryview(part)[sent:])
        sent = 0
