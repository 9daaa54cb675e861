"""Serving under pressure, as real processes: memory that levels off over rounds of many pipelining
clients (helper processes included), and a connection limit that never starves a new client: 128
silent connections get a clear refusal for the next client until one has been idle long enough, then
that one makes room; with room to spare, idle connections are left alone (a kernel mount may idle)."""

from __future__ import annotations

import contextlib
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_client import RawClient, pipelined_requests
from serve_helpers import MiB

from conftest import need_tools

SILENT = 130


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("limits")
    data = random.Random(14).randbytes(32 * MiB)
    (d / "src.raw").write_bytes(data)
    img = d / "src.img"
    subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K", str(d / "src.raw"),
                    str(img)], check=True, capture_output=True)
    return img, data


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [self.proc.pid, *(int(p) for p in out.split())]

    def rss(self) -> int:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


@contextlib.contextmanager
def _serve(image: Path, tmp: Path, *opts: str) -> Iterator[Server]:
    log = tmp / f"server-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "serve-proxy", "--port", "0", *opts,
                                 str(image)], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(line.split("nbd://127.0.0.1:")[1].split("/")[0])
    try:
        yield Server(proc, port, log)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert "Traceback" not in log.read_text(), log.read_text()


def _rounds(server: Server, data: bytes, rounds: int, clients: int, reads: int, burst: int = 64) -> list[int]:
    """``rounds`` times: ``clients`` clients at once, each ``reads`` pipelined bursts of ``burst`` READs;
    total RSS after each."""
    sizes = []
    for r in range(rounds):
        failures: list[BaseException] = []

        def client(i: int, r: int = r, failures: list[BaseException] = failures) -> None:
            try:
                cl = RawClient(("127.0.0.1", server.port), timeout=120)
                cl.go("", structured=True)
                for k in range(reads):
                    requests = pipelined_requests(len(data), r * 10_000 + i * 100 + k, burst)
                    got, errors, _ = cl.read_pipelined(requests)
                    assert not errors and all(got[c] == data[o:o + n] for c, (o, n) in requests.items())
                cl.close()
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        time.sleep(0.5)
        sizes.append(server.rss())
    return sizes


def malloc_heaps(pid: int) -> int:
    """glibc malloc arenas besides the main one: anonymous 64 MiB-aligned reservations of exactly 64 MiB
    (``HEAP_MAX_SIZE``), which is how each appears in ``/proc/PID/maps``."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        a, b = (int(x, 16) for x in parts[0].split("-"))
        maps.append((a, b, len(parts) > 5))
    heaps = 0
    for i, (a, b, named) in enumerate(maps):
        if named or a % (64 * MiB):
            continue
        end, j = b, i + 1
        while j < len(maps) and maps[j][0] == end and not maps[j][2] and end - a < 64 * MiB:
            end, j = maps[j][1], j + 1
        heaps += end - a == 64 * MiB
    return heaps


def test_memory_levels_off_over_rounds_of_clients(image: tuple[Path, bytes], tmp_path: Path) -> None:
    """Item 13 (short): rounds of 64 pipelining clients with helper processes.  The growth came from
    glibc giving contending threads malloc arenas of their own (up to 8 per CPU), each keeping its
    high-water mark: 15 extra arenas per process here after one round, without end on a larger
    machine.  With the cap there are none, and memory is flat once the chunk caches are full: the free heap
    is given back when the last connection ends (without that, RSS after a round was the high-water mark of
    that round's busiest moment, 29 MiB more in the third round than the second once in CI)."""
    with _serve(image[0], tmp_path, "--processes", "2") as server:
        sizes = _rounds(server, image[1], 3, 64, 1, burst=16)
        assert [malloc_heaps(pid) for pid in server.pids()] == [0, 0]
        assert sizes[-1] - sizes[1] < 16 * MiB, [s >> 20 for s in sizes]  # round 1 fills the chunk caches


@pytest.mark.slow
def test_memory_soak_13_rounds_of_64_clients(image: tuple[Path, bytes], tmp_path: Path) -> None:
    """Item 13 as reported: 13 rounds of 64 clients, 3 pipelined bursts each (it grew 54 -> 811 MB)."""
    with _serve(image[0], tmp_path, "--processes", "2") as server:
        sizes = _rounds(server, image[1], 13, 64, 3)
        assert [malloc_heaps(pid) for pid in server.pids()] == [0, 0]
        assert sizes[-1] - sizes[3] < 16 * MiB, [s >> 20 for s in sizes]


def _closed_count(clients: list[RawClient]) -> int:
    """How many of these connections has the server closed?  (A live one has nothing to say: one short
    wait for all of them, not one per connection.)"""
    readable, _, _ = select.select([cl.sock for cl in clients], [], [], 0.2)
    closed = 0
    for sock in readable:
        sock.settimeout(0.2)
        try:
            closed += sock.recv(1) == b""
        except TimeoutError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
    return closed


def _silent(port: int, count: int) -> list[RawClient]:
    out = []
    for _ in range(count):
        cl = RawClient(("127.0.0.1", port), timeout=30)
        cl.go("", structured=True)
        out.append(cl)
    return out


def test_silent_connections_never_starve_a_new_client(image: tuple[Path, bytes], tmp_path: Path) -> None:
    """Item 14: 128 connections that negotiated and went silent: the next client is refused at once and
    clearly (qemu-img prints why); once they have idled 3 s, one gives up its place and nbdinfo and
    nbdcopy are served."""
    need_tools("nbdinfo", "nbdcopy", "qemu-img")
    with _serve(image[0], tmp_path, "--idle-timeout", "3", "--max-connections", "128") as server:
        url = f"nbd://127.0.0.1:{server.port}/"
        silent = _silent(server.port, 128)
        started = time.monotonic()
        r = subprocess.run(["qemu-img", "info", url], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "too many connections: 128 are open" in r.stderr, r.stderr
        r = subprocess.run(["nbdinfo", url], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "server replied with error to opt_go" in r.stderr, r.stderr
        assert time.monotonic() - started < 20  # answered, not left hanging
        time.sleep(max(0.0, started + 3.5 - time.monotonic()))
        for _ in range(3):
            r = subprocess.run(["nbdinfo", "--size", url], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and int(r.stdout) == len(image[1]), r.stderr
        out = tmp_path / "copy.raw"
        subprocess.run(["nbdcopy", url, str(out)], check=True, timeout=120)
        assert out.read_bytes() == image[1]
        # a new client took an idle one's place only when no place was free: a finished client frees its own
        assert 1 <= _closed_count(silent) <= 5
        for cl in silent:
            cl.close()
        assert "refusing a connection: too many connections" in server.log.read_text()


def test_idle_connections_stay_while_there_is_room(image: tuple[Path, bytes], tmp_path: Path) -> None:
    with _serve(image[0], tmp_path, "--idle-timeout", "1", "--max-connections", "8") as server:
        idle = _silent(server.port, 4)
        time.sleep(2.5)
        cl = RawClient(("127.0.0.1", server.port))
        cl.go("", structured=True)
        assert cl.read(0, 4096) == (0, image[1][:4096])
        for c in idle:
            assert c.read(4096, 4096) == (0, image[1][4096:8192])  # still connected and served
            c.close()
        cl.close()


def test_max_connections_and_idle_timeout_are_checked() -> None:
    for opts in (["--max-connections", "0"], ["--idle-timeout", "-1"]):
        r = subprocess.run([sys.executable, "-m", "imaging_utility", "serve-proxy", *opts, "x.img"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and opts[0] in r.stderr, r.stderr
