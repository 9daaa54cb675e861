"""A minimal NBD client written from proto.md, for probing the server byte by byte; ``StreamClient`` is the
socket part, shared with the IMDPROXY test client."""

from __future__ import annotations

import random
import socket
import struct

from imaging_utility.serve.nbd import c_nbd as c


def pipelined_requests(size: int, seed: int, count: int = 64) -> dict[int, tuple[int, int]]:
    """``count`` READs (cookie -> (offset, length)) within ``size`` bytes: 1 byte, 4 KiB, 64 KiB and
    1.5 MiB (more than one reply piece), at seeded random offsets."""
    rng = random.Random(seed)
    out = {}
    for cookie in range(1, count + 1):
        length = rng.choice([1, 4096, 65536, 3 * 1024 * 1024 // 2])
        out[cookie] = (rng.randrange(0, size - length + 1), length)
    return out


class Closed(Exception):
    pass


class StreamClient:
    """A connected TCP (``(host, port)``) or Unix (path) socket with an exact-length ``recv``."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)

    def close(self) -> None:
        self.sock.close()

    def recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise Closed(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)


class RawClient(StreamClient):
    def __init__(self, address: tuple[str, int] | str, timeout: float = 10) -> None:
        super().__init__(address, timeout)
        self.structured = False

    def is_closed(self) -> bool:
        """True when the server has closed the connection (EOF or reset)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    # --- handshake ---
    def greet(self, flags: int = 3) -> None:
        magic, opt, hflags = c.c_server_greeting.unpack(self.recv(18))
        assert (magic, opt, hflags) == (c.NBDMAGIC, c.IHAVEOPT, 3)
        self.sock.sendall(struct.pack(">I", flags))

    def option(self, opt: int, data: bytes = b"") -> None:
        self.sock.sendall(c.c_option.pack(c.IHAVEOPT, opt, len(data)) + data)

    def reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = c.c_option_reply.unpack(self.recv(20))
        assert magic == c.REPLY_MAGIC
        return opt, rtype, self.recv(length)

    def replies_until_final(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _opt, rtype, data = self.reply()
            out.append((rtype, data))
            if rtype == c.NBD_REP_ACK or rtype & c.NBD_REP_FLAG_ERROR:
                return out

    def go(self, name: str = "", structured: bool = False, meta: bool = False) -> int:
        """Negotiate and enter transmission; returns the export size."""
        self.greet()
        if structured:
            self.option(c.NBD_OPT_STRUCTURED_REPLY)
            assert self.replies_until_final()[-1][0] == c.NBD_REP_ACK
            self.structured = True
        raw = name.encode()
        if meta:
            q = c.BASE_ALLOCATION
            self.option(c.NBD_OPT_SET_META_CONTEXT,
                        struct.pack(">I", len(raw)) + raw + struct.pack(">II", 1, len(q)) + q)
            replies = self.replies_until_final()
            assert replies[-1][0] == c.NBD_REP_ACK and replies[0][0] == c.NBD_REP_META_CONTEXT
        self.option(c.NBD_OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        replies = self.replies_until_final()
        assert replies[-1][0] == c.NBD_REP_ACK, replies
        info = next(d for t, d in replies if t == c.NBD_REP_INFO and d[:2] == b"\0\0")
        _t, size, _flags = c.c_info_export.unpack(info)
        return int(size)

    # --- transmission ---
    def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0, cookie: int = 7,
                payload: bytes = b"") -> None:
        self.sock.sendall(c.c_request.pack(c.NBD_REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)

    def simple_reply(self, data_len: int = 0) -> tuple[int, int, bytes]:
        magic, err, cookie = c.c_simple_reply.unpack(self.recv(16))
        assert magic == c.NBD_SIMPLE_REPLY_MAGIC
        return err, cookie, self.recv(data_len) if err == 0 else b""

    def chunks(self) -> list[tuple[int, int, bytes]]:
        """Structured chunks of one reply: (type, cookie, payload) until DONE."""
        out = []
        while True:
            magic, flags, ctype, cookie, length = c.c_structured_reply.unpack(self.recv(20))
            assert magic == c.NBD_STRUCTURED_REPLY_MAGIC, hex(magic)
            out.append((ctype, cookie, self.recv(length)))
            if flags & c.NBD_REPLY_FLAG_DONE:
                return out

    def read(self, offset: int, length: int, flags: int = 0) -> tuple[int, bytes]:
        """(error, data) for one READ in either reply mode; holes come back as zeros."""
        self.request(c.NBD_CMD_READ, offset, length, flags)
        if not self.structured:
            err, _cookie, data = self.simple_reply(length)
            return err, data
        buf = bytearray(length)
        for ctype, _cookie, payload in self.chunks():
            if ctype == c.NBD_REPLY_TYPE_OFFSET_DATA:
                (off,) = struct.unpack_from(">Q", payload)
                buf[off - offset:off - offset + len(payload) - 8] = payload[8:]
            elif ctype & (1 << 15):
                return struct.unpack_from(">I", payload)[0], b""
        return 0, bytes(buf)

    def read_pipelined(self, requests: dict[int, tuple[int, int]],
                       trailer: bytes = b"") -> tuple[dict[int, bytes], dict[int, int], list[int]]:
        """Send every READ (cookie -> (offset, length)) before reading any reply, plus ``trailer`` (more
        raw requests); collect the structured replies: (bytes per cookie, holes as zeros; error per
        cookie; cookies in the order they were done).  Checks that no chunk comes for an unknown or
        finished cookie."""
        self.sock.sendall(b"".join(c.c_request.pack(c.NBD_REQUEST_MAGIC, 0, c.NBD_CMD_READ, k, off, n)
                                   for k, (off, n) in requests.items()) + trailer)
        bufs = {k: bytearray(n) for k, (_o, n) in requests.items()}
        errors: dict[int, int] = {}
        done: list[int] = []
        while len(done) < len(requests):
            magic, flags, ctype, cookie, length = c.c_structured_reply.unpack(self.recv(20))
            assert magic == c.NBD_STRUCTURED_REPLY_MAGIC and cookie in requests and cookie not in done
            payload = self.recv(length)
            offset = requests[cookie][0]
            if ctype == c.NBD_REPLY_TYPE_OFFSET_DATA:
                (at,) = struct.unpack_from(">Q", payload)
                bufs[cookie][at - offset:at - offset + length - 8] = payload[8:]
            elif ctype & (1 << 15):
                errors[cookie] = struct.unpack_from(">I", payload)[0]
            if flags & c.NBD_REPLY_FLAG_DONE:
                done.append(cookie)
        return {k: bytes(b) for k, b in bufs.items()}, errors, done

    def read_pipelined_simple(self, requests: dict[int, tuple[int, int]]) -> dict[int, bytes]:
        """Like ``read_pipelined`` without structured replies (and without errors expected): the bytes
        of each cookie, which also proves that no two simple replies were interleaved."""
        self.sock.sendall(b"".join(c.c_request.pack(c.NBD_REQUEST_MAGIC, 0, c.NBD_CMD_READ, k, off, n)
                                   for k, (off, n) in requests.items()))
        got: dict[int, bytes] = {}
        for _ in requests:
            err, cookie, _ = self.simple_reply()
            assert err == 0 and cookie in requests and cookie not in got, (err, cookie)
            got[cookie] = self.recv(requests[cookie][1])
        return got
