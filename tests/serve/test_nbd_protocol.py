"""The NBD server byte by byte: handshake, options, commands, errors, robustness, memory."""

# ruff: noqa: F811  (pytest fixtures are imported from serve_helpers and requested by name)
from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
import tracemalloc

from nbd_client import Closed, RawClient, pipelined_requests
from serve_helpers import HoleySource, MiB, holey, run_clients, serve_nbd  # noqa: F401  (fixtures)

from imaging_utility.blocks import BytesSource
from imaging_utility.extents import ExtentKind
from imaging_utility.serve.nbd import c_nbd as c

DATA = os.urandom(4 * MiB)


def _check_alive(server) -> None:  # type: ignore[no-untyped-def]
    client = RawClient(server.address)
    size = client.go("")
    assert client.read(0, 4096) == (0, _bytes(server, 0, 4096))
    client.request(c.NBD_CMD_DISC)
    client.close()
    assert size == server.exports[""].size


def _bytes(server, offset: int, n: int) -> bytes:  # type: ignore[no-untyped-def]
    buf = bytearray(n)
    server.exports[""].readinto_at(offset, buf)
    return bytes(buf)


def test_options_list_info_unknown_and_errors(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": BytesSource(DATA), "p1": BytesSource(DATA[:MiB])},
                       descriptions={"p1": "partition 1"})
    cl = RawClient(server.address)
    cl.greet()
    cl.option(c.NBD_OPT_LIST)
    replies = cl.replies_until_final()
    names = [d[4:4 + struct.unpack(">I", d[:4])[0]] for t, d in replies if t == c.NBD_REP_SERVER]
    assert names == [b"", b"p1"] and replies[-1][0] == c.NBD_REP_ACK
    cl.option(c.NBD_OPT_LIST, b"junk")
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_INVALID
    cl.option(0x7777, b"x" * 100)  # unknown option: data discarded, stream stays in step
    assert cl.replies_until_final() == [(c.NBD_REP_ERR_UNSUP, b"option 30583 is not supported")]
    cl.option(c.NBD_OPT_STARTTLS)
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_UNSUP
    cl.option(c.NBD_OPT_INFO, struct.pack(">I", 2) + b"p1" + struct.pack(">HHHH", 3, 1, 2, 3))
    replies = cl.replies_until_final()
    infos = {struct.unpack(">H", d[:2])[0]: d[2:] for t, d in replies if t == c.NBD_REP_INFO}
    assert struct.unpack(">QH", infos[0]) == (MiB, 0x0507)  # no SEND_DF without structured replies
    assert infos[1] == b"p1" and infos[2] == b"partition 1"
    assert struct.unpack(">III", infos[3]) == (1, 4096, 32 * MiB)
    cl.option(c.NBD_OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_UNKNOWN
    cl.option(c.NBD_OPT_GO, struct.pack(">I", 200) + b"p1\0\0")  # name length beyond the data
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_INVALID
    q = c.BASE_ALLOCATION
    set_meta = struct.pack(">I", 0) + struct.pack(">II", 1, len(q)) + q
    cl.option(c.NBD_OPT_SET_META_CONTEXT, set_meta)  # before STRUCTURED_REPLY
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_INVALID
    cl.option(c.NBD_OPT_LIST_META_CONTEXT, struct.pack(">II", 0, 0))
    replies = cl.replies_until_final()
    assert replies == [(c.NBD_REP_META_CONTEXT, b"\0\0\0\0" + q), (c.NBD_REP_ACK, b"")]
    cl.option(c.NBD_OPT_LIST_META_CONTEXT, struct.pack(">II", 0, 5))  # claims 5 queries, has none
    assert cl.replies_until_final()[-1][0] == c.NBD_REP_ERR_INVALID
    cl.option(c.NBD_OPT_ABORT)
    assert cl.replies_until_final() == [(c.NBD_REP_ACK, b"")]
    assert cl.is_closed()


def test_export_name_path_with_and_without_zeroes(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": BytesSource(DATA)})
    for flags, pad in ((1, 124), (3, 0)):
        cl = RawClient(server.address)
        cl.greet(flags)
        cl.option(c.NBD_OPT_EXPORT_NAME, b"")
        size, tflags = struct.unpack(">QH", cl.recv(10))
        assert (size, tflags) == (len(DATA), 0x0507)
        assert cl.recv(pad) == bytes(pad)
        assert cl.read(12345, 1000) == (0, DATA[12345:13345])
        cl.close()
    cl = RawClient(server.address)
    cl.greet()
    cl.option(c.NBD_OPT_EXPORT_NAME, b"missing")  # cannot be refused politely: hard disconnect
    assert cl.is_closed()


def test_malformed_handshakes_never_hurt_the_server(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": BytesSource(DATA)})
    cases = [
        lambda cl: cl.sock.sendall(struct.pack(">I", 0x80)),  # unknown client flag bit
        lambda cl: cl.sock.sendall(struct.pack(">I", 3) + b"NOTMAGIC" + bytes(8)),  # bad option magic
        lambda cl: cl.sock.sendall(struct.pack(">I", 3) + c.c_option.pack(c.IHAVEOPT, 7, 1 << 30)),  # huge
        lambda cl: cl.sock.sendall(struct.pack(">I", 3) + c.c_option.pack(c.IHAVEOPT, 7, 100) + b"x"),
        lambda cl: cl.sock.sendall(b"\x00\x00"),  # half a flags word, then EOF
        lambda cl: cl.sock.sendall(os.urandom(4096)),
    ]
    for send in cases:
        cl = RawClient(server.address)
        cl.recv(18)
        send(cl)
        with contextlib.suppress(OSError):  # the server may have dropped us already
            cl.sock.shutdown(socket.SHUT_WR)
        assert cl.is_closed()
        cl.close()
    cl = RawClient(server.address)  # a client that connects and never speaks, then vanishes
    cl.close()
    _check_alive(server)


def test_simple_replies_commands_and_errors(serve_nbd, holey) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": holey})
    cl = RawClient(server.address)
    assert cl.go("") == holey.size
    assert cl.read(MiB - 10, 3 * MiB) == (0, holey.data[MiB - 10:4 * MiB - 10])
    assert cl.read(holey.size - 1, 2)[0] == c.NBD_EINVAL  # past the end
    assert cl.read(0, 0xFFFFFFFF)[0] == c.NBD_EINVAL  # larger than the 32 MiB maximum
    assert cl.read(2**64 - 1, 1)[0] == c.NBD_EINVAL  # offset + length overflows u64
    assert cl.read(7 * MiB, 4096)[0] == c.NBD_EIO  # corrupt chunk: this request fails...
    assert cl.read(6 * MiB, 4096) == (0, holey.data[6 * MiB:6 * MiB + 4096])  # ...the connection lives
    cl.request(c.NBD_CMD_WRITE, 0, 5000, payload=b"w" * 5000)  # payload drained, stream in step
    assert cl.simple_reply()[:2] == (c.NBD_EPERM, 7)
    for cmd in (c.NBD_CMD_TRIM, c.NBD_CMD_WRITE_ZEROES):
        cl.request(cmd, 0, 4096)
        assert cl.simple_reply()[0] == c.NBD_EPERM
    for cmd, length, err in ((c.NBD_CMD_FLUSH, 0, 0), (c.NBD_CMD_CACHE, 4096, 0),
                             (c.NBD_CMD_CACHE, holey.size + 1, c.NBD_EINVAL), (42, 0, c.NBD_EINVAL),
                             (c.NBD_CMD_BLOCK_STATUS, 4096, c.NBD_EINVAL)):  # no structured replies
        cl.request(cmd, 0, length, cookie=0xDEADBEEF)
        assert cl.simple_reply() == (err, 0xDEADBEEF, b"")
    assert cl.read(0, 100, flags=c.NBD_CMD_FLAG_DF)[0] == c.NBD_EINVAL  # DF needs structured replies
    cl.request(c.NBD_CMD_DISC)
    assert cl.is_closed()


def test_structured_reads_holes_df_and_errors(serve_nbd, holey) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": holey})
    cl = RawClient(server.address)
    cl.go("", structured=True, meta=True)
    cl.request(c.NBD_CMD_READ, MiB, 6 * MiB)
    chunks = cl.chunks()
    holes = [struct.unpack(">QI", p) for t, _k, p in chunks if t == c.NBD_REPLY_TYPE_OFFSET_HOLE]
    assert holes == [(2 * MiB, 2 * MiB), (4 * MiB, 2 * MiB)]  # ZERO and UNALLOCATED both skip the wire
    data_bytes = sum(len(p) - 8 for t, _k, p in chunks if t == c.NBD_REPLY_TYPE_OFFSET_DATA)
    assert data_bytes == 2 * MiB
    assert cl.read(MiB, 6 * MiB) == (0, holey.data[MiB:7 * MiB])
    cl.request(c.NBD_CMD_READ, 2 * MiB - 100, 60000, flags=c.NBD_CMD_FLAG_DF)
    chunks = cl.chunks()
    assert [t for t, _k, _p in chunks] == [c.NBD_REPLY_TYPE_OFFSET_DATA]
    assert chunks[0][2][8:] == holey.data[2 * MiB - 100:2 * MiB - 100 + 60000]
    assert cl.read(0, 2 * MiB, flags=c.NBD_CMD_FLAG_DF)[0] == c.NBD_EOVERFLOW
    cl.request(c.NBD_CMD_READ, 6 * MiB, 2 * MiB)  # runs into the corrupt chunk at 7 MiB
    chunks = cl.chunks()
    assert chunks[-1][0] == c.NBD_REPLY_TYPE_ERROR_OFFSET
    err, msglen = struct.unpack_from(">IH", chunks[-1][2])
    assert err == c.NBD_EIO and b"checksum" in chunks[-1][2][6:6 + msglen]
    assert struct.unpack(">Q", chunks[-1][2][-8:])[0] == 7 * MiB
    assert cl.read(holey.size, 1)[0] == c.NBD_EINVAL  # structured error chunk, not a simple reply
    cl.request(c.NBD_CMD_READ, 0, 0)
    assert [t for t, _k, _p in cl.chunks()] == [c.NBD_REPLY_TYPE_NONE]
    assert cl.read(8 * MiB - 4096, 4096) == (0, holey.data[-4096:])


def test_block_status(serve_nbd, holey) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": holey, "other": BytesSource(DATA)})
    cl = RawClient(server.address)
    cl.go("", structured=True, meta=True)

    def status(offset: int, length: int, flags: int = 0) -> list[tuple[int, int]]:
        cl.request(c.NBD_CMD_BLOCK_STATUS, offset, length, flags)
        [(ctype, _cookie, payload)] = cl.chunks()
        assert ctype == c.NBD_REPLY_TYPE_BLOCK_STATUS and payload[:4] == b"\0\0\0\1"
        return [struct.unpack_from(">II", payload, 4 + 8 * i) for i in range((len(payload) - 4) // 8)]

    assert status(0, holey.size) == [(2 * MiB, 0), (2 * MiB, 2), (2 * MiB, 3), (2 * MiB, 0)]
    assert status(3 * MiB, 2 * MiB) == [(MiB, 2), (MiB, 3)]
    assert status(0, holey.size, c.NBD_CMD_FLAG_REQ_ONE) == [(2 * MiB, 0)]
    cl.request(c.NBD_CMD_BLOCK_STATUS, 0, holey.size + 1)
    assert cl.chunks()[0][0] == c.NBD_REPLY_TYPE_ERROR
    # a context negotiated for export "" does not carry over to "other"
    other = RawClient(server.address)
    other.greet()
    other.option(c.NBD_OPT_STRUCTURED_REPLY)
    other.replies_until_final()
    q = c.BASE_ALLOCATION
    other.option(c.NBD_OPT_SET_META_CONTEXT, struct.pack(">I", 0) + struct.pack(">II", 1, len(q)) + q)
    other.replies_until_final()
    other.option(c.NBD_OPT_GO, struct.pack(">I", 5) + b"other" + struct.pack(">H", 0))
    other.replies_until_final()
    other.structured = True
    other.request(c.NBD_CMD_BLOCK_STATUS, 0, 4096)
    assert other.chunks()[0][0] == c.NBD_REPLY_TYPE_ERROR


def test_client_vanishing_mid_reply(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    big = BytesSource(os.urandom(32 * MiB))
    server = serve_nbd({"": big})
    for structured in (False, True):
        for _ in range(3):
            cl = RawClient(server.address)
            cl.go("", structured=structured)
            cl.request(c.NBD_CMD_READ, 0, 32 * MiB)
            cl.recv(1000)
            cl.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            cl.close()
    deadline = time.monotonic() + 5
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections == 0
    _check_alive(server)


def test_32_concurrent_clients(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": BytesSource(DATA)})

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        cl = RawClient(server.address)
        cl.go("", structured=bool(seed % 2))
        for _ in range(20):
            off = rng.randrange(len(DATA) - 1)
            n = rng.randrange(1, min(256 * 1024, len(DATA) - off))
            assert cl.read(off, n) == (0, DATA[off:off + n])
        cl.request(c.NBD_CMD_DISC)
        cl.close()

    run_clients(worker)


def test_memory_flat_over_100k_requests(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": BytesSource(DATA)}, unix_path=None)
    cl = RawClient(server.address)
    cl.go("", structured=True)
    batch = 500
    req = b"".join(c.c_request.pack(c.NBD_REQUEST_MAGIC, 0, c.NBD_CMD_READ, i, (i * 4096) % len(DATA), 512)
                   for i in range(batch))
    reply_len = (20 + 8 + 512) * batch

    def run(rounds: int) -> None:
        for _ in range(rounds):
            cl.sock.sendall(req)  # pipelined: the server reads ahead while we wait for replies
            cl.recv(reply_len)

    run(20)  # warm up: buffers, thread, caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run(200)  # 100,000 requests
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename")
                 if "imaging_utility" in str(s.traceback) or "socket" in str(s.traceback))
    assert growth < 64 * 1024, f"server memory grew by {growth} bytes over 100k requests"
    try:
        cl.request(c.NBD_CMD_DISC)
    except Closed:
        pass


def _corrupt(offset: int, length: int) -> bool:
    return offset < 7 * MiB + 64 * 1024 and 7 * MiB < offset + length


def test_pipelined_structured_reads_come_back_out_of_order_and_whole(serve_nbd, holey) -> None:  # type: ignore[no-untyped-def]
    """64 requests sent before reading any reply: each cookie gets exactly its bytes (or EIO), chunks of
    different replies may interleave, and the connection stays usable."""
    server = serve_nbd({"": holey}, threads=4)
    cl = RawClient(server.address)
    cl.go("", structured=True)
    requests = pipelined_requests(holey.size, 1)
    got, errors, done = cl.read_pipelined(requests)
    assert done != sorted(done)  # replies really overtook each other
    for cookie, (offset, n) in requests.items():
        if _corrupt(offset, n):
            assert errors.get(cookie) == c.NBD_EIO, cookie
        else:
            assert cookie not in errors and got[cookie] == holey.data[offset:offset + n], cookie
    assert cl.read(0, 4096) == (0, holey.data[:4096])


def test_pipelined_simple_replies_are_never_interleaved(serve_nbd, holey) -> None:  # type: ignore[no-untyped-def]
    server = serve_nbd({"": holey}, threads=4)
    cl = RawClient(server.address)
    cl.go("")
    requests = {k: v for k, v in pipelined_requests(holey.size, 2).items() if not _corrupt(*v)}
    got = cl.read_pipelined_simple(requests)
    assert got == {k: holey.data[o:o + n] for k, (o, n) in requests.items()}


def test_reads_of_many_small_extents_are_answered_whole(serve_nbd) -> None:  # type: ignore[no-untyped-def]
    """Two pipelined 4 MiB READs of alternating 4 KiB data and zero extents: 2,048 small reply chunks in
    one batch.  Holding them all for one ``sendmsg`` would pass IOV_MAX (1024); they go out in bounded
    groups, each reply's chunks in order."""
    data = bytearray(os.urandom(8 * MiB))
    kinds = []
    for off in range(0, 8 * MiB, 8192):
        data[off:off + 4096] = bytes(4096)
        kinds.append((off, 4096, ExtentKind.ZERO))
    src = HoleySource(bytes(data), kinds)
    server = serve_nbd({"": src})
    cl = RawClient(server.address)
    cl.go("", structured=True)
    requests = {1: (0, 4 * MiB), 2: (4 * MiB + 512, 4 * MiB - 512)}
    got, errors, _done = cl.read_pipelined(requests)
    assert not errors
    for cookie, (offset, n) in requests.items():
        assert got[cookie] == data[offset:offset + n]
