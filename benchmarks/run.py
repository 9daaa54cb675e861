#!/usr/bin/env python3
"""Benchmarks against the peer tools, on the same data, in the same run.  Not part of the test suite.

    .venv/bin/python benchmarks/run.py [--corpus DIR] [--work DIR] [--reps 3] [--only core,chunks,rss]
    (--only also takes: used, serve, files, export)
    .venv/bin/python benchmarks/run.py --only linuxfs     (XFS/Btrfs/NTFS used-only; root; bench_linuxfs.py)
    .venv/bin/python benchmarks/run.py --only s3          (images on a local SeaweedFS S3; bench_s3.py)
    .venv/bin/python benchmarks/run.py --only extract     (extract with Linux metadata vs cp -a; root; bench_extract.py)
    .venv/bin/python benchmarks/run.py --only hardening   (memory under load vs qemu-nbd, rclone; bench_hardening.py)
    .venv/bin/python benchmarks/run.py --only gui         (the GUI's dashboard vs the CLI; root, tmux; bench_gui.py)

Builds the corpus with ../shared/corpus/make_corpus.py when it is missing, warms the page cache,
and prints MiB/s, output size, CPU seconds and peak RSS of every command, with ratios against the peer.
Each figure is the median of ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORPUS_SCRIPT = REPO.parent / "shared" / "corpus" / "make_corpus.py"
PY = sys.executable
MiB = 1 << 20


def compile_package() -> None:
    """Compile the package's byte-code, as an installed copy has it.

    pip and apt install byte-code (.pyc) with the modules (so does the standalone build).  A source
    checkout run under PYTHONDONTWRITEBYTECODE=1 (as on the project's VM) has none and compiles every
    module a command imports on every start: about 65 ms of an ``image`` run (80 modules), which no
    installed copy pays and which a benchmark of a one-second job would count as 4% of its time.
    Python still reads byte-code under PYTHONDONTWRITEBYTECODE; only writing it is off."""
    import compileall

    import imaging_utility

    compileall.compile_dir(Path(imaging_utility.__file__).parent, quiet=1)


compile_package()  # before any figure: every benchmark runs the CLI as installed
TOOL = [PY, "-m", "imaging_utility"]


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mib: float


def timed(cmd: list[str] | str, *, shell: bool = False) -> Run:
    """Run a command after ``sync`` (so no earlier run's dirty pages are written back during it);
    wall time, CPU (user+sys, children included) from wait4, peak RSS from GNU time (a forked
    child's ru_maxrss would start at this process's own size)."""
    subprocess.run(["sync"], check=True)
    argv = cmd if not shell else ["/bin/sh", "-c", cmd]
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed: {cmd}\n{err}")
        peak_kib = int(rss.read().split()[-1])
    return Run(wall, ru.ru_utime + ru.ru_stime, peak_kib / 1024)


def median_run(cmd: list[str] | str, reps: int, *, shell: bool = False, before: str | None = None) -> Run:
    runs = []
    for _ in range(reps):
        if before:
            subprocess.run(before, shell=True, check=True)
        runs.append(timed(cmd, shell=shell))
    return Run(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
               max(r.rss_mib for r in runs))


def interleaved(cmds: dict[str, tuple[list[str] | str, bool]], reps: int,
                before: str | dict[str, str] | None = None) -> dict[str, Run]:
    """Run every command once per round, ``reps`` rounds (A B C A B C …), so slow drift of the machine
    (page cache, the VM's memory) hits every command alike; medians per command.  ``before`` (untimed)
    runs before every command, or, as a dict, before the command of that name."""
    runs: dict[str, list[Run]] = {name: [] for name in cmds}
    for _ in range(reps):
        for name, (cmd, shell) in cmds.items():
            first = before.get(name) if isinstance(before, dict) else before
            if first:
                subprocess.run(first, shell=True, check=True)
            runs[name].append(timed(cmd, shell=shell))
    return {name: Run(statistics.median(r.wall for r in rs), statistics.median(r.cpu for r in rs),
                      max(r.rss_mib for r in rs)) for name, rs in runs.items()}


def warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def row(name: str, src_bytes: int, r: Run, out_bytes: int | None, peer: Run | None) -> str:
    rate = src_bytes / r.wall / MiB
    ratio = f"{peer.wall / r.wall:.2f}×" if peer else "1.00× (peer)"
    out = f"{out_bytes / MiB:,.1f} MiB" if out_bytes is not None else "—"
    return f"| {name} | {r.wall:.2f} s | {rate:,.0f} MiB/s | {out} | {r.cpu:.1f} s | {r.rss_mib:,.0f} MiB | {ratio} |"


HEAD = ("| command | wall | throughput | output | CPU | peak RSS | speed vs peer |\n"
        "|---|---|---|---|---|---|---|")


def size_of(path: Path) -> int:
    return path.stat().st_size


def bench_core(src: Path, work: Path, reps: int, level: int) -> None:
    n = size_of(src)
    img, zst, raw = work / "mixed.img", work / "mixed.zst", work / "restored.raw"
    print(f"\n## image / restore / verify — {src.name}, {n / MiB:,.0f} MiB, level {level}, "
          f"{os.cpu_count()} CPUs, median of {reps}\n")
    print(HEAD)
    variants: dict[str, tuple[list[str] | str, bool]] = {
        "zstd": (f"zstd -q -T0 -{level} -c {shlex.quote(str(src))} > {shlex.quote(str(zst))}", True),
        "default": ([*TOOL, "image", "--force", "--level", str(level), str(src), str(img)], False),
    }
    for hashes in ("sha256", "sha256,blake3", "md5", "none"):
        variants[hashes] = ([*TOOL, "image", "--force", "--hash", hashes, "--level", str(level), str(src),
                             str(img)], False)
    # each writes a new file (a replaced one is written back at its close by ext4: auto_da_alloc)
    res = interleaved(variants, reps, before={name: f"rm -f {shlex.quote(str(zst if name == 'zstd' else img))}"
                                              for name in variants})
    peer = res["zstd"]
    print(row(f"`zstd -T0 -{level} -c SRC > OUT`", n, peer, size_of(zst), None))
    print(row("`imaging-utility image` (default digest: blake3)", n, res["default"], size_of(img), peer))
    for hashes in ("sha256", "sha256,blake3", "md5", "none"):
        print(row(f"`imaging-utility image --hash {hashes}`", n, res[hashes], size_of(img), peer))
    ours_size = size_of(img)
    print(f"\nimage size vs zstd: {ours_size / size_of(zst) * 100 - 100:+.2f}%\n")
    subprocess.run([*TOOL, "image", "--force", "--level", str(level), str(src), str(img)], check=True,
                   stdout=subprocess.DEVNULL)
    print(HEAD)
    # Remove the previous output, flush, and let the machine settle: on a VM that hands freed memory back
    # to the host, the first writer after a large delete pays for re-faulting it; settling makes every
    # command start from the same state.
    rm = f"rm -f {shlex.quote(str(raw))}; sync; sleep 3"
    res = interleaved({
        "zstd": (f"zstd -q -dc {shlex.quote(str(zst))} > {shlex.quote(str(raw))}", True),
        "restore": ([*TOOL, "restore", str(img), str(raw)], False),
        "restore-verify": ([*TOOL, "restore", "--verify", str(img), str(raw)], False),
    }, reps, before=rm)
    peer = res["zstd"]
    print(row("`zstd -dc OUT > RAW`", n, peer, None, None))
    print(row("`imaging-utility restore IMAGE RAW` (sparse file)", n, res["restore"], None, peer))
    print(row("`imaging-utility restore --verify IMAGE RAW`", n, res["restore-verify"], None, peer))
    print()
    print(HEAD)
    t = median_run(f"zstd -q -t {shlex.quote(str(zst))}", reps, shell=True)
    s = median_run(f"sha256sum {shlex.quote(str(src))}", reps, shell=True)
    seq = Run(t.wall + s.wall, t.cpu + s.cpu, max(t.rss_mib, s.rss_mib))
    print(row("`zstd -t OUT` then `sha256sum SRC`", n, seq, None, None))
    pipe = median_run(f"zstd -q -dc {shlex.quote(str(zst))} | sha256sum", reps, shell=True)
    print(row("`zstd -dc OUT \\| sha256sum` (pipeline, both cores)", n, pipe, None, seq))
    r = median_run([*TOOL, "verify", str(img)], reps)
    print(row("`imaging-utility verify IMAGE` (stored digest: blake3)", n, r, None, seq))
    r = median_run([*TOOL, "verify", "--hash", "sha256", str(img)], reps)
    print(row("`imaging-utility verify --hash sha256 IMAGE` (blake3 + sha256)", n, r, None, seq))
    print(f"\nverify vs the pipeline: {pipe.wall / r.wall:.2f}×")


def bench_chunks(src: Path, work: Path, level: int) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from imaging_utility.image.reader import open_image

    n = size_of(src)
    print(f"\n## chunk size: imaging throughput vs random 4 KiB read latency through read() — {src.name}\n")
    print("| chunk | image wall | throughput | image size | 4 KiB random read p50 | p99 |")
    print("|---|---|---|---|---|---|")
    img = work / "chunk.img"
    for chunk in ("256K", "512K", "1M", "2M", "4M"):
        r = timed([*TOOL, "image", "--force", "--chunk-size", chunk, "--level", str(level), str(src), str(img)])
        lat = []
        rng = random.Random(1)
        # Every read a cache miss on a stored (non-zero) chunk: what a random reader pays.
        with open_image(str(img), readahead=0, cache_bytes=1) as reader:
            data_chunks = [i for i in range(reader.chunk_count) if not reader.is_zero_chunk(i)]
            for _ in range(400):
                index = rng.choice(data_chunks)
                off = index * reader.chunk_size + rng.randrange(0, reader.chunk_len(index) - 4096 + 1, 4096)
                t0 = time.perf_counter()
                reader.read(off, 4096)
                lat.append(time.perf_counter() - t0)
        lat.sort()
        print(f"| {chunk} | {r.wall:.2f} s | {n / r.wall / MiB:,.0f} MiB/s | {size_of(img) / MiB:,.1f} MiB | "
              f"{lat[len(lat) // 2] * 1e3:.2f} ms | {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms |")


def bench_rss(src: Path, work: Path) -> None:
    sparse = work / "sparse16g.raw"
    with open(sparse, "wb") as fh:
        fh.truncate(16 << 30)
        for i in range(16):
            fh.seek(i << 30)
            fh.write(os.urandom(4 << 20))
    print("\n## peak RSS by source size\n")
    print("| source | image wall | peak RSS | restore peak RSS | verify peak RSS |")
    print("|---|---|---|---|---|")
    for s in (src, sparse):
        img = work / "rss.img"
        r = timed([*TOOL, "image", "--force", str(s), str(img)])
        out = work / "rss.raw"
        if out.exists():
            out.unlink()
        rr = timed([*TOOL, "restore", str(img), str(out)])
        v = timed([*TOOL, "verify", str(img)])
        print(f"| {s.name} ({size_of(s) / (1 << 30):.0f} GiB) | {r.wall:.1f} s | {r.rss_mib:.0f} MiB | "
              f"{rr.rss_mib:.0f} MiB | {v.rss_mib:.0f} MiB |")
        out.unlink()
    sparse.unlink()


def bench_used(corpus: Path, work: Path, reps: int, level: int) -> None:
    """Used-only imaging of the NTFS and ext4 corpus volumes vs partclone/ntfsclone piped into zstd."""
    for tool in ("partclone.ntfs", "partclone.extfs", "ntfsclone"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"used-only benchmark needs {tool}")
    out = work / "used.out"
    q = shlex.quote
    print(f"\n## used-only imaging — corpus volumes, level {level}, median of {reps}\n")
    print("| volume | used | command | wall | source MiB/s | output | CPU | speed vs fastest peer | size vs smallest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, peers in (
        ("ntfs.raw", {"partclone.ntfs -c -a0 \\| zstd -T0": "partclone.ntfs -c -a0 -L /dev/null -s {src} -o -",
                      "ntfsclone --save-image \\| zstd -T0": "ntfsclone -f --save-image -o - {src}"}),
        ("ext4.raw", {"partclone.extfs -c -a0 \\| zstd -T0": "partclone.extfs -c -a0 -L /dev/null -s {src} -o -"}),
        ("ext4-2x.raw", {"partclone.extfs -c -a0 \\| zstd -T0": "partclone.extfs -c -a0 -L /dev/null -s {src} -o -"}),
    ):
        src = corpus / name
        if not src.exists():
            print(f"| {name} | — | missing: build it with make_corpus.py | | | | | | |")
            continue
        warm(src)
        n = size_of(src)
        info = json.loads(subprocess.run([*TOOL, "image", "--force", "--json", "--used-only", str(src), str(out)],
                                         capture_output=True, text=True, check=True).stdout)
        used = info["used_bytes"]
        ours = "imaging-utility image --used-only"
        outputs = {label: f"{out}-{i}" for i, label in enumerate(peers)} | {ours: f"{out}-ours"}
        cmds: dict[str, tuple[list[str] | str, bool]] = {
            label: (f"{cmd.format(src=q(str(src)))} 2>/dev/null | zstd -q -T0 -{level} -c > {q(outputs[label])}",
                    True) for label, cmd in peers.items()}
        cmds[ours] = ([*TOOL, "image", "--force", "--used-only", "--level", str(level), str(src), outputs[ours]], False)
        # every command writes a new file: one replacing its last run's output makes ext4 write the whole new
        # file back at its close (auto_da_alloc), which is not what is measured here
        res = interleaved(cmds, reps, before={label: f"rm -f {q(path)}" for label, path in outputs.items()})
        results = [(label, res[label], size_of(Path(path))) for label, path in outputs.items()]
        fastest = min(r.wall for _, r, _ in results[:-1])
        smallest = min(sz for _, _, sz in results[:-1])
        for label, r, sz in results:
            print(f"| {name} | {used / MiB:,.0f} MiB | `{label}` | {r.wall:.2f} s | {n / r.wall / MiB:,.0f} | "
                  f"{sz / MiB:,.1f} MiB | {r.cpu:.1f} s | {fastest / r.wall:.2f}× | "
                  f"{sz / smallest * 100 - 100:+.1f}% |")


def bench_files(corpus: Path, work: Path, reps: int) -> None:
    """Extract the NTFS corpus tree from a compressed image vs zstd -d + ntfs-3g loop mount + cp -a;
    WebDAV GET throughput of a 512 MiB file."""
    for tool in ("ntfs-3g", "curl", "mke2fs"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"files benchmark needs {tool}")
    src = corpus / "ntfs.raw"
    img = work / "ntfs-full.img"
    if not img.exists():
        subprocess.run([*TOOL, "image", "--force", str(src), str(img)], check=True, stdout=subprocess.DEVNULL)
    warm(img)
    raw, mnt, dest = work / "ntfs-restored.raw", work / "ntfs-mnt", work / "extract-dest"
    mnt.mkdir(exist_ok=True)
    q = shlex.quote
    clean = f"rm -rf {q(str(dest))} {q(str(raw))}"
    peer = median_run(
        f"zstd -q -d {q(str(img))} -o {q(str(raw))} && ntfs-3g -o ro {q(str(raw))} {q(str(mnt))} && "
        f"cp -a {q(str(mnt))}/. {q(str(dest))} ; umount {q(str(mnt))}", reps, shell=True, before=clean)
    ours = median_run([*TOOL, "extract", str(img), "/", str(dest)], reps, before=clean)
    files = sum(1 for _ in dest.rglob("*") if _.is_file())
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    subprocess.run(clean, shell=True, check=True)
    print(f"\n## files: extract the whole tree of {src.name} ({files:,} files, {size / MiB:,.0f} MiB), "
          f"median of {reps}\n")
    print("| route | wall | CPU | speed vs usual route |")
    print("|---|---|---|---|")
    print(f"| `zstd -d` + `ntfs-3g -o ro` loop mount + `cp -a` | {peer.wall:.2f} s | {peer.cpu:.1f} s | 1.00× |")
    print(f"| `imaging-utility extract IMAGE / DEST` | {ours.wall:.2f} s | {ours.cpu:.1f} s | "
          f"{peer.wall / ours.wall:.2f}× |")
    # WebDAV GET of one 512 MiB file, from an image of an ext4 volume holding it
    vol, big = work / "webdav-ext4.raw", work / "big.bin"
    wimg = work / "webdav-ext4.img"
    if not wimg.exists():
        stage = work / "webdav-stage"
        stage.mkdir(exist_ok=True)
        with open(stage / "big.bin", "wb") as fh:
            rng = random.Random(5)
            for _ in range(512):
                fh.write(rng.randbytes(MiB // 2) + TEXT_HALF)
        subprocess.run(["truncate", "-s", "700M", str(vol)], check=True)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(stage), str(vol)], check=True)
        subprocess.run([*TOOL, "image", "--force", str(vol), str(wimg)], check=True, stdout=subprocess.DEVNULL)
    port = 18091
    proc = _serve([*TOOL, "webdav", "--port", str(port), str(wimg)], port)
    try:
        runs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", str(big), f"http://127.0.0.1:{port}/big.bin"], check=True)
            runs.append(time.perf_counter() - t0)
        got = size_of(big)
    finally:
        proc.terminate()
        proc.wait(10)
        big.unlink(missing_ok=True)
    wall = statistics.median(runs)
    print(f"\nWebDAV: `curl` GET of a {got / MiB:,.0f} MiB file: {wall:.2f} s, **{got / wall / MiB:,.0f} MiB/s** "
          f"(median of {reps}; target ≥ 200 MiB/s)")


TEXT_HALF = (b"log line 0123456789 the quick brown fox jumps over the lazy dog\n" * 9000)[: MiB // 2]


def _fio(uri: str, rw: str, bs: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}", "--iodepth=16",
         "--size=2G", "--time_based", f"--runtime={seconds}", "--output-format=json", "--readonly"],
        capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    return {"iops": job["iops"], "mib_s": job["bw_bytes"] / MiB,
            "p99_ms": job["clat_ns"]["percentile"]["99.000000"] / 1e6}


def _serve(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    import socket

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {cmd}")


def bench_serve(src: Path, work: Path, seconds: int) -> None:
    for tool in ("fio", "qemu-nbd", "qemu-img", "nbdkit"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"serve benchmark needs {tool}")
    qcow = work / "mixed.qcow2"
    if not qcow.exists():
        subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", str(src),
                        str(qcow)], check=True)
    images = {}
    for chunk in ("1M", "256K", "64K"):
        img = work / f"serve-{chunk}.img"  # always rebuilt: the reader's fast paths depend on the image version
        subprocess.run([*TOOL, "image", "--force", "--chunk-size", chunk, str(src), str(img)], check=True,
                       stdout=subprocess.DEVNULL)
        images[chunk] = img
    servers = {
        "`qemu-nbd -r` on compressed qcow2 (zstd)": ["qemu-nbd", "-r", "-f", "qcow2", "-p", "{port}", "-t",
                                                     str(qcow)],
        "`nbdkit file` on the raw file": ["nbdkit", "-f", "-r", "-p", "{port}", "file", str(src)],
        **{f"`imaging-utility serve-proxy` ({c} chunks)": [*TOOL, "serve-proxy", "--port", "{port}", str(i)]
           for c, i in images.items()},
    }
    print(f"\n## serve: fio --ioengine=nbd, iodepth 16, {seconds} s each — {src.name}\n")
    print("| server | 4 KiB random read IOPS | p99 latency | 1 MiB sequential read | IOPS vs qemu-nbd "
          "| seq vs qemu-nbd |")
    print("|---|---|---|---|---|---|")
    base: dict[str, float] | None = None
    for port, (name, cmd) in enumerate(servers.items(), start=10900):
        proc = _serve([c.replace("{port}", str(port)) for c in cmd], port)
        try:
            uri = f"nbd://127.0.0.1:{port}/"
            rnd = _fio(uri, "randread", "4k", seconds)
            seq = _fio(uri, "read", "1m", seconds)
        finally:
            proc.terminate()
            proc.wait(10)
        if base is None:
            base = {"iops": rnd["iops"], "mib_s": seq["mib_s"]}
        print(f"| {name} | {rnd['iops']:,.0f} | {rnd['p99_ms']:.2f} ms | {seq['mib_s']:,.0f} MiB/s | "
              f"{rnd['iops'] / base['iops']:.2f}× | {seq['mib_s'] / base['mib_s']:.2f}× |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/iu-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/iu-bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--only", default="core,chunks,rss,used,serve,files",
                    help="comma-separated: core, chunks, rss, used, serve, files, extract, linuxfs, backup (8 GiB "
                         "disk, root), release (after scripts/build-release), s3, export, hardening (root), gui "
                         "(root, tmux)")
    ap.add_argument("--seconds", type=int, default=10, help="fio run time per measurement (serve)")
    args = ap.parse_args()
    for tool in ("zstd", "sha256sum", "/usr/bin/time"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"benchmark needs {tool}")
    src = args.corpus / "mixed.raw"
    only = set(args.only.split(","))
    if only - {"backup"} and not src.exists():  # the backup benchmark builds its own disk
        subprocess.run([PY, str(CORPUS_SCRIPT), str(args.corpus), "--only", "mixed"], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if only - {"backup"}:
        warm(src)
    info = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
            "zstd": subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()}
    print("# imaging-utility benchmarks\n\n" + json.dumps(info))
    if "core" in only:
        bench_core(src, args.work, args.reps, args.level)
    if "chunks" in only:
        bench_chunks(src, args.work, args.level)
    if "rss" in only:
        bench_rss(src, args.work)
    if "used" in only:
        bench_used(args.corpus, args.work, args.reps, args.level)
    if "serve" in only:
        bench_serve(src, args.work, args.seconds)
    if "files" in only:
        bench_files(args.corpus, args.work, args.reps)
    if "extract" in only:
        from bench_extract import bench_extract

        bench_extract(args.corpus, args.work, args.reps)
    if "backup" in only:
        from bench_backup import bench_backup

        bench_backup(args.work, args.reps)
    if "linuxfs" in only:
        from bench_linuxfs import main_section

        main_section(args.corpus, args.work, args.reps, args.level, keep=False)
    if "hardening" in only:  # not in the default set: root, and several minutes of load
        import bench_hardening

        bench_hardening.run(args.work)
    if "release" in only:
        from bench_release import bench_release
        bench_release(src, args.work, args.reps)
    if "s3" in only:
        from bench_s3 import main_section as s3_section

        s3_section(args.corpus, args.work, args.reps, args.level, args.seconds)
    if "export" in only:
        from bench_export import bench_export

        bench_export(args.corpus, args.work, args.reps)
    if "gui" in only:
        from bench_gui import bench_gui
        bench_gui(src, args.work, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
