"""Memory under load, against the peers in the same run (``run.py --only hardening``; root for the
loop mount):

1. NBD: rounds of 64 clients, each sending 3 bursts of 64 pipelined READs (1 B .. 1.5 MiB) at a 64 MiB
   image: total RSS of ``serve-proxy`` (all its processes) after each round, beside ``qemu-nbd -r``
   serving the same bytes from a raw file.  Flat is the goal; the peer shows what flat looks like.
2. WebDAV: ``PROPFIND Depth: 1`` of a directory of 100,000 entries (made by the kernel), one client and
   then four at once: wall time and the server's peak RSS, ours (on the volume file) beside
   ``rclone serve webdav`` (on the kernel's read-only mount of the same volume).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "serve"))
from nbd_client import RawClient, pipelined_requests  # noqa: E402

PY = sys.executable
MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss(pid: int) -> int:
    pids = [pid, *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait_port(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def _nbd_rounds(port: int, pid: int, size: int, rounds: int) -> list[int]:
    out = []
    for r in range(rounds):
        def client(i: int, r: int = r) -> None:
            cl = RawClient(("127.0.0.1", port), timeout=300)
            cl.go("", structured=True)
            for k in range(3):
                cl.read_pipelined(pipelined_requests(size, r * 1000 + i * 10 + k))
            cl.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
        out.append(_tree_rss(pid))
    return out


def bench_nbd(work: Path, rounds: int) -> None:
    raw, img = work / "hard-nbd.raw", work / "hard-nbd.img"
    if not raw.exists():
        raw.write_bytes(random.Random(5).randbytes(64 * MiB))
    if not img.exists():
        subprocess.run([PY, "-m", "imaging_utility", "image", "--force", "--chunk-size", "64K", str(raw), str(img)],
                       check=True, capture_output=True)
    results = {}
    qemu = ["qemu-nbd", "-r", "-t", "-e", "128", "-b", "127.0.0.1", "-f", "raw", str(raw)]
    for name, cmd in (("imaging-utility serve-proxy", [PY, "-m", "imaging_utility", "serve-proxy", str(img)]),
                      ("qemu-nbd -r (peer)", qemu)):
        port = _free_port()
        proc = subprocess.Popen([*cmd, "--port", str(port)] if name.startswith("imaging") else
                                [*cmd[:-1], "-p", str(port), cmd[-1]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port)
            results[name] = _nbd_rounds(port, proc.pid, 64 * MiB, rounds)
        finally:
            proc.terminate()
            proc.wait()
    print(f"\n## NBD memory over rounds of 64 pipelining clients (total RSS, MiB; {os.cpu_count()} CPUs)\n")
    names = list(results)
    print("| round | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for r in range(rounds):
        print(f"| {r + 1} | " + " | ".join(f"{results[n][r] >> 20}" for n in names) + " |")
    ours = results[names[0]]
    print(f"\ngrowth from round 3 to round {rounds}: ours {(ours[-1] - ours[2]) >> 20} MiB, "
          f"qemu-nbd {(results[names[1]][-1] - results[names[1]][2]) >> 20} MiB")


def _propfind(url: str, clients: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", "900", "-X", "PROPFIND",
                               "-H", "Depth: 1", url]) for _ in range(clients)]
    for p in procs:
        p.wait()
    return time.perf_counter() - start


def bench_propfind(work: Path, entries: int = 100_000) -> None:
    if os.geteuid() != 0:
        print("\n## PROPFIND: skipped (needs root for the loop mount)")
        return
    vol = work / "hard-dir.raw"
    mnt = Path(tempfile.mkdtemp(prefix="bench-dav-"))
    if not vol.exists():
        with open(vol, "wb") as f:
            f.truncate(64 * MiB)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-N", str(entries + 1000), str(vol)], check=True)
        subprocess.run(["mount", "-o", "loop", str(vol), str(mnt)], check=True)
        (mnt / "d").mkdir()
        fd = os.open(mnt / "d", os.O_RDONLY)
        for i in range(entries):
            os.close(os.open(f"f{i:06d}.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.close(fd)
        subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", "-o", "loop,ro", str(vol), str(mnt)], check=True)
    rows = []
    try:
        for name, cmd in (("imaging-utility webdav", [PY, "-m", "imaging_utility", "webdav", str(vol), "--port"]),
                          ("rclone serve webdav (peer)", ["rclone", "serve", "webdav", str(mnt), "--addr"])):
            port = _free_port()
            arg = str(port) if name.startswith("imaging") else f"127.0.0.1:{port}"
            proc = subprocess.Popen([*cmd, arg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "RCLONE_CONFIG": "/dev/null"})
            try:
                _wait_port(port)
                url = f"http://127.0.0.1:{port}/d/"
                one = _propfind(url, 1)
                hwm1 = _hwm(proc.pid)
                four = _propfind(url, 4)
                rows.append((name, one, hwm1, four, _hwm(proc.pid)))
            finally:
                proc.terminate()
                proc.wait()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
    print(f"\n## PROPFIND Depth: 1 of a {entries:,}-entry directory (wall time, server peak RSS)\n")
    print("| server | 1 client | peak RSS | 4 at once | peak RSS |\n|---|---|---|---|---|")
    for name, one, h1, four, h4 in rows:
        print(f"| {name} | {one:.1f} s | {h1 >> 20} MiB | {four:.1f} s | {h4 >> 20} MiB |")


def run(work: Path, rounds: int = 13) -> None:
    for tool in ("qemu-nbd", "curl", "rclone"):
        if shutil.which(tool) is None:
            raise SystemExit(f"hardening benchmark needs {tool}")
    bench_nbd(work, rounds)
    bench_propfind(work)
