"""``serve-proxy --processes N``: helper processes sharing each NBD connection, as real processes.

The image is real (64 KiB chunks, one chunk's frame damaged); the checks are the protocol ones: every
pipelined request gets exactly its bytes or EIO, replies are whole, helpers really serve requests, and a
helper that dies takes down only its connections, never the server or the other clients."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_client import RawClient, pipelined_requests
from serve_helpers import MiB, run_clients

from imaging_utility.serve.nbd import c_nbd as c

CHUNK = 64 * 1024
CORRUPT = 7 * MiB  # the chunk starting here has a damaged frame


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("procs")
    data = bytearray(random.Random(5).randbytes(8 * MiB))
    data[2 * MiB:4 * MiB] = bytes(2 * MiB)
    (d / "src.raw").write_bytes(data)
    img = d / "src.img"
    subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K",
                    str(d / "src.raw"), str(img)], check=True, capture_output=True)
    from imaging_utility.image.reader import open_image

    with open_image(str(img)) as reader:
        index = CORRUPT // CHUNK
        pos = reader.chunk_offsets[index] + reader.chunk_csizes[index] // 2
    raw = bytearray(img.read_bytes())
    raw[pos] ^= 0xFF
    img.write_bytes(raw)
    return img, bytes(data)


class Served:
    def __init__(self, proc: subprocess.Popen[str], address: tuple[str, int], log: Path) -> None:
        self.proc = proc
        self.address = address
        self.log = log  # the server's stderr (a file: a pipe nobody reads would fill up and stall it)

    def helpers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


@pytest.fixture
def served(image: tuple[Path, bytes], tmp_path: Path) -> Iterator[Served]:
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", "--processes", "3",
                                 "--port", "0", str(image[0])], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.split("nbd://127.0.0.1:")[1].split("/")[0])
    server = Served(proc, ("127.0.0.1", port), log)
    yield server
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    assert not server.helpers()


def _bad(offset: int, length: int) -> bool:
    return offset < CORRUPT + CHUNK and offset + length > CORRUPT


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a PID 1 that never reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _proc_number(path: str, key: str) -> int:
    """The first number after ``key`` in a ``/proc`` file (``io``'s ``rchar:``, ``status``'s ``VmRSS:``)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in {path}")


def _read_bytes(pid: int) -> int:
    """Bytes this process has read with read/pread/recv."""
    return _proc_number(f"/proc/{pid}/io", "rchar:")


def test_helpers_serve_pipelined_structured_reads(served: Served, image: tuple[Path, bytes]) -> None:
    data = image[1]
    helpers = served.helpers()
    assert len(helpers) == 2
    before = {pid: _read_bytes(pid) for pid in helpers}
    cl = RawClient(served.address)
    assert cl.go("", structured=True) == len(data)
    for round_ in range(20):
        requests = pipelined_requests(len(data), round_)
        got, errors, _done = cl.read_pipelined(requests)
        for cookie, (offset, n) in requests.items():
            if _bad(offset, n):
                assert errors.get(cookie) == c.NBD_EIO, cookie
            else:
                assert cookie not in errors and got[cookie] == data[offset:offset + n], cookie
    assert cl.read(0, 4096) == (0, data[:4096])
    cl.close()
    # every helper read image data for this one connection
    assert all(_read_bytes(pid) - before[pid] > MiB for pid in helpers), before


def test_helpers_never_interleave_simple_replies(served: Served, image: tuple[Path, bytes]) -> None:
    data = image[1]
    cl = RawClient(served.address)
    cl.go("")
    for round_ in range(10):
        requests = {k: v for k, v in pipelined_requests(len(data), 100 + round_).items() if not _bad(*v)}
        got = cl.read_pipelined_simple(requests)
        assert got == {k: data[o:o + n] for k, (o, n) in requests.items()}
    assert cl.read(CORRUPT, 10)[0] == c.NBD_EIO
    assert cl.read(CORRUPT - 10, 10) == (0, data[CORRUPT - 10:CORRUPT])


def test_helpers_with_32_concurrent_clients(served: Served, image: tuple[Path, bytes]) -> None:
    data = image[1]

    def client(i: int) -> None:
        rng = random.Random(i)
        cl = RawClient(served.address, timeout=30)
        cl.go("", structured=bool(i % 2))
        for _ in range(40):
            n = rng.choice([512, 4096, 65536, 300000])
            off = rng.randrange(0, len(data) - n)
            err, got = cl.read(off, n)
            assert (err, got if not err else b"") == ((c.NBD_EIO, b"") if _bad(off, n) else (0, data[off:off + n]))
        cl.request(c.NBD_CMD_DISC)
        assert cl.is_closed()
        cl.close()

    run_clients(client, 32)


def test_a_dead_helper_drops_only_its_connections(served: Served, image: tuple[Path, bytes]) -> None:
    data = image[1]
    busy = RawClient(served.address)
    busy.go("", structured=True)
    assert busy.read(0, 4096) == (0, data[:4096])
    victim = served.helpers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victim in served.helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    # the connection the helper shared is dropped (its locks may have died with it) ...
    try:
        busy.sock.settimeout(10)
        outcome = busy.read(4096, 4096)
    except Exception:  # dropped: EOF, reset or a short reply
        outcome = None
    assert outcome is None or outcome == (0, data[4096:8192])
    busy.close()
    # ... the server lives on, with the other helper and the main process
    for _ in range(3):
        cl = RawClient(served.address)
        cl.go("", structured=True)
        for off in range(0, 6 * MiB, 512 * 1024):
            assert cl.read(off, 65536) == (0, data[off:off + 65536])
        cl.close()
    assert served.proc.poll() is None
    assert len(served.helpers()) == 1
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(20) == 0
    assert "helper process" in served.log.read_text()


def test_disc_after_pipelined_reads_gets_every_reply_first(served: Served, image: tuple[Path, bytes]) -> None:
    """NBD_CMD_DISC right behind 64 READs: whichever process reads DISC, the others still answer."""
    data = image[1]
    cl = RawClient(served.address)
    cl.go("", structured=True)
    requests = {k: v for k, v in pipelined_requests(len(data), 7).items() if not _bad(*v)}
    got, errors, done = cl.read_pipelined(requests, trailer=c.c_request.pack(c.NBD_REQUEST_MAGIC, 0,
                                                                            c.NBD_CMD_DISC, 0, 0, 0))
    assert not errors and all(got[k] == data[o:o + n] for k, (o, n) in requests.items())
    assert sorted(done) == sorted(requests)
    assert cl.is_closed()


def test_helpers_exit_when_the_main_process_is_killed(served: Served, image: tuple[Path, bytes]) -> None:
    helpers = served.helpers()
    cl = RawClient(served.address)
    cl.go("", structured=True)
    assert cl.read(0, 4096) == (0, image[1][:4096])
    served.proc.kill()
    served.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(map(_running, helpers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, helpers))
    cl.close()


def test_vanishing_clients_leave_no_slot_behind(served: Served, image: tuple[Path, bytes]) -> None:
    """150 clients (more than the 128 connection slots) pipeline large READs and vanish mid-reply; each
    slot must come back, or later connections would silently lose their helpers."""
    data = image[1]

    def vanish(i: int) -> None:
        cl = RawClient(served.address)
        cl.go("", structured=bool(i % 2))
        cl.sock.sendall(b"".join(c.c_request.pack(c.NBD_REQUEST_MAGIC, 0, c.NBD_CMD_READ, k, k * MiB // 2, MiB)
                                 for k in range(8)))
        cl.recv(20)
        cl.close()

    for _ in range(5):
        run_clients(vanish, 30)
    helpers = served.helpers()
    assert len(helpers) == 2
    time.sleep(0.5)  # the last connections' helpers finish their replies
    before = {pid: _read_bytes(pid) for pid in helpers}
    cl = RawClient(served.address)
    cl.go("", structured=True)
    for k in range(4):
        requests = pipelined_requests(len(data), 200 + k)
        got, errors, _done = cl.read_pipelined(requests)
        assert all(got[key] == data[o:o + n] for key, (o, n) in requests.items() if key not in errors)
    assert cl.read(5 * MiB, 4096) == (0, data[5 * MiB:5 * MiB + 4096])
    assert all(_read_bytes(pid) - before[pid] > MiB for pid in helpers), before
    assert served.proc.poll() is None


def _rss(pid: int) -> int:
    return _proc_number(f"/proc/{pid}/status", "VmRSS:") * 1024


def test_memory_of_every_process_stays_flat_over_100k_requests(served: Served, image: tuple[Path, bytes]) -> None:
    data = image[1]
    rng = random.Random(9)
    cl = RawClient(served.address, timeout=30)
    cl.go("", structured=True)
    pids = [served.proc.pid, *served.helpers()]

    def burst() -> None:
        requests = {}
        for k in range(1, 65):
            n = rng.choice([512, 4096, 65536])
            requests[k] = (rng.randrange(0, len(data) - n), n)
        got, errors, _done = cl.read_pipelined(requests)
        for k, (o, n) in requests.items():
            assert (errors[k] == c.NBD_EIO) if _bad(o, n) else got[k] == data[o:o + n]

    for _ in range(10_000 // 64):
        burst()
    before = {pid: _rss(pid) for pid in pids}
    for _ in range(100_000 // 64):
        burst()
    after = {pid: _rss(pid) for pid in pids}
    assert all(after[p] - before[p] < 8 * MiB for p in pids), (before, after)
