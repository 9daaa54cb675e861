"""Extract the ext4 corpus volume with every piece of Linux metadata (modes, owners, links, xattrs, times)
against the route that gives the same result: ``zstd -d`` + a read-only kernel loop mount + ``cp -a``.

    .venv/bin/python benchmarks/run.py --only extract [--reps 3]

Needs root (the loop mount, and restoring owners).  Also times ``extract --no-owner --no-xattrs`` to show
what the metadata costs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path


def bench_extract(corpus: Path, work: Path, reps: int) -> None:
    from run import TOOL, MiB, median_run, warm

    if os.geteuid() != 0:
        raise SystemExit("the extract benchmark needs root (loop mount, owners)")
    src = corpus / "ext4.raw"
    img = work / "ext4-full.img"
    if not img.exists():
        subprocess.run([*TOOL, "image", "--force", str(src), str(img)], check=True, stdout=subprocess.DEVNULL)
    warm(img)
    raw, mnt, dest = work / "ext4-restored.raw", work / "ext4-mnt", work / "extract-ext4-dest"
    mnt.mkdir(exist_ok=True)
    q = shlex.quote
    clean = f"rm -rf {q(str(dest))} {q(str(raw))}"
    peer = median_run(
        f"zstd -q -d {q(str(img))} -o {q(str(raw))} && mount -o ro,loop {q(str(raw))} {q(str(mnt))} && "
        f"cp -a {q(str(mnt))}/. {q(str(dest))} ; umount {q(str(mnt))}", reps, shell=True, before=clean)
    ours = median_run([*TOOL, "extract", str(img), "/", str(dest)], reps, before=clean)
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    bare = median_run([*TOOL, "extract", "--no-owner", "--no-xattrs", str(img), "/", str(dest)], reps, before=clean)
    subprocess.run(clean, shell=True, check=True)
    print(f"\n## extract with Linux metadata: {src.name} ({files:,} files, {size / MiB:,.0f} MiB), as root, "
          f"median of {reps}\n")
    print("| route | wall | CPU | speed vs usual route |")
    print("|---|---|---|---|")
    print(f"| `zstd -d` + `mount -o ro,loop` + `cp -a` | {peer.wall:.2f} s | {peer.cpu:.1f} s | 1.00× |")
    print(f"| `imaging-utility extract IMAGE / DEST` (owners, modes, xattrs, times) | {ours.wall:.2f} s | "
          f"{ours.cpu:.1f} s | {peer.wall / ours.wall:.2f}× |")
    print(f"| `imaging-utility extract --no-owner --no-xattrs` | {bare.wall:.2f} s | {bare.cpu:.1f} s | "
          f"{peer.wall / bare.wall:.2f}× |")
