#!/usr/bin/env python3
"""Used-only imaging of XFS, Btrfs and NTFS volumes against partclone / ntfsclone piped into zstd.

    .venv/bin/python benchmarks/run.py --only linuxfs [--reps 3] [--work DIR]
    .venv/bin/python benchmarks/bench_linuxfs.py [--reps 3] [--work DIR] [--corpus DIR] [--keep]

Builds (root: loop devices and kernel mounts; cached in ``--work`` between runs, removed unless
``--keep``): 4 GiB XFS and Btrfs volumes holding the corpus file tree (~1 GiB of mixed files,
``shared/corpus/make_corpus.py``'s ``stage``), the same with the tree twice (~2 GiB) to show that
time follows used bytes, and a 2 GiB NTFS with ~800 MiB of the tree.  The 4 GiB NTFS is the
corpus's ``ntfs.raw``.  Free space is filled with random bytes before mkfs.

Every command runs interleaved (A B C A B C …) after ``sync``, with the volume in the page cache;
figures are medians of ``--reps``.  Throughput is source bytes per second.  Our command includes
the image's fsync (the peers' pipelines do not sync).  partclone runs twice: as shipped, and without the
up-to-2-s wait for its progress thread at exit (``peer_partclone.py``); the targets are held to the latter.

Every output file is removed before each command (not timed): a command replacing its last run's
output would make ext4 write the whole new file back at its close (``auto_da_alloc``), up to a second
here, which is not what is measured.

A last row per volume is a floor, not a tool: ``zstd -T0`` alone compressing the peer's own output
(the used bytes, extracted beforehand and in the page cache) into ``/dev/null``.  Compressing those
bytes at that level on this machine takes at least that long, whatever a tool does about reading,
hashing or writing: the floor's ratio to the peer bounds what any "vs peer" figure can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_partclone import nowait_env  # noqa: E402
from run import PY, TOOL, MiB, interleaved, size_of, warm  # noqa: E402

GiB = 1 << 30
PEERS = {
    "xfs": ("partclone.xfs -c -a0 \\| zstd -T0", "partclone.xfs -c -a0 -L /dev/null -s {src} -o -"),
    "btrfs": ("partclone.btrfs -c -a0 \\| zstd -T0", "partclone.btrfs -c -a0 -L /dev/null -s {src} -o -"),
    "ntfs": ("ntfsclone --save-image \\| zstd -T0", "ntfsclone -f --save-image -o - {src}"),
}


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _prefill(path: Path, size: int) -> None:
    """Random bytes everywhere (a 16 MiB random pattern repeated: the peers and we never read free space)."""
    block = random.Random(7).randbytes(16 * MiB)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def _copy_tree(stage: Path, dest: Path, limit: int | None = None) -> int:
    """Copy the corpus tree (up to ``limit`` bytes of files) into ``dest``; returns the bytes copied."""
    copied = 0
    for dirpath, _dirs, files in os.walk(stage):
        rel = Path(dirpath).relative_to(stage)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            src = Path(dirpath, name)
            n = src.stat().st_size
            if limit is not None and copied + n > limit:
                continue
            shutil.copyfile(src, dest / rel / name)
            copied += n
    return copied


def _mounted_copy(path: Path, kind: str, stage: Path, copies: int, limit: int | None) -> None:
    mnt = Path(tempfile.mkdtemp(prefix="bench-linuxfs-"))
    try:
        if kind == "ntfs":
            _run("ntfs-3g", path, mnt)
        else:
            _run("mount", "-o", "loop", path, mnt)
        try:
            for i in range(copies):
                _copy_tree(stage, mnt / f"copy{i}", limit)
        finally:
            _run("umount", mnt)
    finally:
        mnt.rmdir()


def build(work: Path, stage: Path) -> dict[str, Path]:
    """The volumes, built once and kept in ``work`` (``name -> path``)."""
    specs = [("xfs.raw", "xfs", 4 * GiB, 1, None), ("xfs-2x.raw", "xfs", 4 * GiB, 2, None),
             ("btrfs.raw", "btrfs", 4 * GiB, 1, None), ("btrfs-2x.raw", "btrfs", 4 * GiB, 2, None),
             ("ntfs-2g.raw", "ntfs", 2 * GiB, 1, 800 * MiB)]
    out: dict[str, Path] = {}
    for name, kind, size, copies, limit in specs:
        path = work / name
        done = path.with_suffix(".done")
        if not done.exists():
            print(f"building {name} ...", file=sys.stderr, flush=True)
            _prefill(path, size)
            mkfs = {"xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"],
                    "ntfs": ["mkntfs", "-F", "-Q", "-q"]}[kind]
            _run(*mkfs, path)
            _mounted_copy(path, kind, stage, copies, limit)
            done.touch()
        out[name] = path
    return out


def bench(volumes: dict[str, Path], work: Path, reps: int, level: int) -> dict[str, float]:
    q = shlex.quote
    out = work / "out"
    nowait = nowait_env(work)
    if nowait is None:
        print("\nno C compiler: partclone is measured as shipped only (with its progress wait)")
    print(f"\n## used-only imaging: XFS, Btrfs, NTFS — level {level}, median of {reps}, interleaved\n")
    print("| volume | used | command | wall | source MiB/s | output | CPU | speed vs peer | "
          "vs peer without its wait | size vs peer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ours_wall: dict[str, float] = {}
    for name, src in volumes.items():
        kind = name.split("-")[0].split(".")[0]
        label, peer = PEERS[kind]
        warm(src)
        info = json.loads(subprocess.run([*TOOL, "image", "--force", "--json", "--used-only", str(src), str(out)],
                                         capture_output=True, text=True, check=True).stdout)
        used = info["used_bytes"]
        ours = "imaging-utility image --used-only"
        cmds: dict[str, tuple[list[str] | str, bool]] = {
            label: (f"{peer.format(src=q(str(src)))} 2>/dev/null | zstd -q -T0 -{level} -c > {q(str(out))}-peer",
                    True),
            ours: ([*TOOL, "image", "--force", "--used-only", "--level", str(level), str(src), f"{out}-ours"], False),
        }
        rows: list[tuple[str, str | None]] = [(label, f"{out}-peer")]
        fast = label
        if nowait and kind != "ntfs":  # partclone's progress wait (peer_partclone.py); ntfsclone has none
            fast = f"{label} (no progress wait)"
            cmds[fast] = (f"{nowait} {cmds[label][0]}".replace(f"{out}-peer", f"{out}-peer-nowait"), True)
            rows.append((fast, f"{out}-peer-nowait"))
        rows.append((ours, f"{out}-ours"))
        floor = f"floor: zstd -T0 -{level} of the used bytes into /dev/null"
        raw = f"{out}-raw"
        subprocess.run(f"{nowait or ''} {peer.format(src=q(str(src)))} 2>/dev/null > {q(raw)}", shell=True,
                       check=True)
        cmds[floor] = (f"zstd -q -T0 -{level} -c {q(raw)} > /dev/null", True)
        rows.append((floor, None))
        warm(Path(raw))
        res = interleaved(cmds, reps, before={cmd: f"rm -f {q(path)}" for cmd, path in rows if path})
        n = size_of(src)
        peer_size = size_of(Path(f"{out}-peer"))
        for cmd, path in rows:
            r = res[cmd]
            sz = size_of(Path(path)) if path else None
            output = f"{sz / MiB:,.1f} MiB | " if sz else "— | "
            print(f"| {name} | {used / MiB:,.0f} MiB | `{cmd}` | {r.wall:.2f} s | {n / r.wall / MiB:,.0f} | "
                  f"{output}{r.cpu:.1f} s | {res[label].wall / r.wall:.2f}× | "
                  f"{res[fast].wall / r.wall:.2f}× | {f'{sz / peer_size * 100 - 100:+.1f}%' if sz else '—'} |")
        ours_wall[name] = res[ours].wall
        ours_wall[name + ":used"] = used
    for kind in ("xfs", "btrfs"):
        one, two = f"{kind}.raw", f"{kind}-2x.raw"
        if one in ours_wall and two in ours_wall:
            print(f"\n{kind}: {ours_wall[two + ':used'] / ours_wall[one + ':used']:.2f}× the used bytes took "
                  f"{ours_wall[two] / ours_wall[one]:.2f}× the time")
    for p in (f"{out}-peer", f"{out}-peer-nowait", f"{out}-ours", f"{out}-raw", str(out)):
        Path(p).unlink(missing_ok=True)
    return ours_wall


def main_section(corpus: Path, work: Path, reps: int, level: int, keep: bool = True) -> None:
    for tool in ("partclone.xfs", "partclone.btrfs", "ntfsclone", "mkfs.xfs", "mkfs.btrfs", "mkntfs", "ntfs-3g"):
        if shutil.which(tool) is None:
            raise SystemExit(f"the linuxfs benchmark needs {tool}")
    if os.geteuid() != 0:
        raise SystemExit("the linuxfs benchmark needs root (loop devices and mounts)")
    stage = corpus / "stage"
    if not stage.is_dir():
        subprocess.run([PY, str(HERE.parent.parent / "shared" / "corpus" / "make_corpus.py"), str(corpus),
                        "--only", "ntfs"], check=True)
    mine = work / "linuxfs"
    mine.mkdir(parents=True, exist_ok=True)
    volumes = build(mine, stage)
    ordered = {k: volumes[k] for k in ("xfs.raw", "xfs-2x.raw", "btrfs.raw", "btrfs-2x.raw")}
    if (corpus / "ntfs.raw").exists():
        ordered["ntfs.raw"] = corpus / "ntfs.raw"
    ordered["ntfs-2g.raw"] = volumes["ntfs-2g.raw"]
    bench(ordered, mine, reps, level)
    if not keep:
        shutil.rmtree(mine)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/iu-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/iu-bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the built volumes for the next run")
    args = ap.parse_args()
    main_section(args.corpus, args.work, args.reps, args.level, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
