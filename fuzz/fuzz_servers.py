"""Fuzz the NBD and IMDPROXY servers with what a client sends: options, requests, payloads.

Input: a byte choosing the protocol (even: NBD, odd: IMDPROXY), then the client's whole byte stream.
The server's own ``handle(sock)`` serves it over a socket pair, exporting a real image (a golden
vector), until the stream ends.  A crash is an exception out of ``handle``, or one the server caught
and logged as an error ("request failed"): ``handle`` must end cleanly whatever the client sends.
"""

from __future__ import annotations

import logging
import socket
import threading

import atheris

with atheris.instrument_imports():
    from _common import ROOT, ErrorLog, fuzz_main

    from imaging_utility.image.reader import open_image
    from imaging_utility.serve.imdproxy import ImdproxyServer
    from imaging_utility.serve.nbd.server import NbdServer

IMAGE = open_image(str(ROOT / "tests" / "format" / "golden" / "full-64k-sha256.img"))
NBD = NbdServer({"": IMAGE, "golden": IMAGE}, port=0, threads=1, handshake_timeout=5)
IMDPROXY = ImdproxyServer(IMAGE, port=0)
ERRORS = ErrorLog()
logging.getLogger("imaging_utility").addHandler(ERRORS)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    server = IMDPROXY if data[0] & 1 else NBD
    client, ours = socket.socketpair()
    with client, ours:
        ours.settimeout(10)
        reader = threading.Thread(target=_drain, args=(client,), daemon=True)
        reader.start()
        sender = threading.Thread(target=_send, args=(client, data[1:]), daemon=True)
        sender.start()
        server.handle(ours)
        ours.shutdown(socket.SHUT_RDWR)
        sender.join()
        reader.join()
    ERRORS.check()


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
