"""IMDPROXY server against a client written from inc/imdproxy.h (what the ImDisk driver sends)."""

# ruff: noqa: F811  (pytest fixtures are imported from serve_helpers and requested by name)
from __future__ import annotations

import errno
import os
import socket
import struct

from nbd_client import StreamClient
from serve_helpers import MiB, holey, run_clients, serve_imdproxy  # noqa: F401  (fixtures)

from imaging_utility.blocks import BytesSource
from imaging_utility.serve.imdproxy import IMDPROXY_FLAG_RO

Q = struct.Struct("<Q")
QQ = struct.Struct("<QQ")
QQQ = struct.Struct("<QQQ")


class ImdClient(StreamClient):
    def info(self) -> tuple[int, int, int]:
        self.sock.sendall(Q.pack(1))
        return QQQ.unpack(self.recv(24))  # type: ignore[return-value]

    def read(self, offset: int, length: int) -> tuple[int, bytes]:
        self.sock.sendall(Q.pack(2) + QQ.pack(offset, length))
        err, n = QQ.unpack(self.recv(16))
        return err, self.recv(n) if err == 0 else b""

    def read_all(self, offset: int, length: int) -> bytes:
        """Loop like the driver: ask again after a short reply, stop at length 0."""
        out = bytearray()
        while len(out) < length:
            err, data = self.read(offset + len(out), length - len(out))
            assert err == 0
            if not data:
                break
            out += data
        return bytes(out)

    def write(self, offset: int, data: bytes) -> tuple[int, int]:
        self.sock.sendall(Q.pack(3) + QQ.pack(offset, len(data)) + data)
        return QQ.unpack(self.recv(16))  # type: ignore[return-value]

    def close(self) -> None:
        self.sock.sendall(Q.pack(5))
        assert self.sock.recv(1) == b""
        self.sock.close()


def test_info_read_write_close(serve_imdproxy, holey) -> None:  # type: ignore[no-untyped-def]
    server = serve_imdproxy(holey)
    cl = ImdClient(server.address)
    assert cl.info() == (holey.size, 1, IMDPROXY_FLAG_RO)
    assert cl.read(0, 512) == (0, holey.data[:512])
    assert cl.read(12345, 7777) == (0, holey.data[12345:12345 + 7777])  # unaligned
    assert cl.read_all(MiB, 5 * MiB) == holey.data[MiB:6 * MiB]  # larger than one server piece
    assert cl.read(holey.size - 100, 4096) == (0, holey.data[-100:])  # short at the end of the image
    assert cl.read(holey.size, 512) == (0, b"")  # at the end: length 0 tells the driver to stop
    assert cl.read(holey.size + 512, 512) == (errno.EINVAL, b"")
    assert cl.read(7 * MiB, 4096) == (errno.EIO, b"")  # corrupt chunk: this request only
    assert cl.write(0, b"x" * 70000) == (errno.EBADF, 0)  # payload drained first
    assert cl.read(6 * MiB, 4096) == (0, holey.data[6 * MiB:6 * MiB + 4096])  # still in step
    cl.close()


def test_unix_socket_and_many_clients(serve_imdproxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * MiB)
    path = str(tmp_path / "imd.sock")
    server = serve_imdproxy(BytesSource(data), unix_path=path)

    def worker(i: int) -> None:
        cl = ImdClient(path)
        assert cl.info()[0] == len(data)
        for k in range(10):
            off = (i * 7919 + k * 104729) % (len(data) - 65536)
            assert cl.read(off, 65536) == (0, data[off:off + 65536])
        cl.close()

    run_clients(worker)
    server.shutdown()
    assert not os.path.exists(path)


def test_malformed_requests_drop_only_that_client(serve_imdproxy) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(MiB)
    server = serve_imdproxy(BytesSource(data))
    bad = [Q.pack(99), Q.pack(4) + QQ.pack(0, 10) + b"x" * 10, Q.pack(2) + b"\x01\x02",
           Q.pack(3) + QQ.pack(0, 1 << 62), os.urandom(3)]
    for payload in bad:
        cl = ImdClient(server.address)
        cl.sock.sendall(payload)
        cl.sock.shutdown(socket.SHUT_WR)
        assert cl.sock.recv(100) == b""  # dropped, no reply bytes
        cl.sock.close()
    cl = ImdClient(server.address)  # vanish mid-reply
    cl.sock.sendall(Q.pack(2) + QQ.pack(0, MiB))
    cl.recv(100)
    cl.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cl.sock.close()
    cl = ImdClient(server.address)
    assert cl.read(1000, 1000) == (0, data[1000:2000])
    cl.close()
