#!/usr/bin/env python3
"""Release build figures: start-up time, size, imaging throughput of the standalone executable vs the venv.

    .venv/bin/python benchmarks/run.py --only release [--reps 3]      (after scripts/build-release)
    .venv/bin/python benchmarks/bench_release.py [--dist dist] [--reps 3]

Start-up: median of 20 runs of ``--version`` and ``--help`` (targets: <= 100 ms from the venv, <= 300 ms
from the standalone executable), for the venv's console script, the single-file executable and the
one-folder build.  Throughput: ``image`` of mixed.raw (level 3, default threads), the executable and
the venv interleaved, median of ``--reps`` (target: executable >= 0.98 x venv).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
sys.path.insert(0, str(HERE))
from run import compile_package  # noqa: E402

CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _startup_ms(argv: list[str], env: dict[str, str], runs: int = 20) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system, the process and its children) in ms; the CPU
    figure holds up better than the wall time on a machine shared with other work."""
    subprocess.run(argv, capture_output=True, env=env, check=True)  # warm the page cache
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
        walls.append((time.perf_counter() - start) * 1000)
        after = os.times()
        cpus.append((after.children_user - before.children_user + after.children_system
                     - before.children_system) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _find(dist: Path, pattern: str) -> Path:
    found = [p for p in dist.glob(pattern) if p.is_file()]
    if len(found) != 1:
        raise SystemExit(f"release benchmark: expected one {pattern} in {dist} (run scripts/build-release)")
    return found[0]


def bench_release(src: Path, work: Path, reps: int, dist: Path | None = None) -> None:
    dist = dist or Path(os.environ.get("RELEASE_DIST", REPO / "dist"))
    exe = _find(dist, "imaging-utility-*-linux-*[!z]")
    tarball = _find(dist, "imaging-utility-*-linux-*.tar.gz")
    deb = _find(dist, "imaging-utility_*.deb")
    folder_root = work / "release-folder"
    shutil.rmtree(folder_root, ignore_errors=True)
    shutil.rmtree(work / "sfx-cache", ignore_errors=True)
    folder_root.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(folder_root, filter="tar")
    folder_exe = next(folder_root.glob("*/imaging-utility"))
    venv_script = Path(sys.executable).parent / "imaging-utility"
    compile_package()
    venv_env = CLEAN_ENV

    print(f"\n## release build — {exe.name}\n")
    print("| artifact | size |\n|---|---:|")
    print(f"| single-file executable | {exe.stat().st_size / MiB:.1f} MiB |")
    print(f"| one-folder build (.tar.gz) | {tarball.stat().st_size / MiB:.1f} MiB "
          f"({_dir_bytes(folder_exe.parent) / MiB:.1f} MiB unpacked) |")
    print(f"| .deb | {deb.stat().st_size / MiB:.1f} MiB |")

    print("\n### start-up, median of 20: wall ms (CPU ms)\n")
    print("| program | --version | --help | target (wall) |\n|---|---:|---:|---:|")
    sfx_env = {**CLEAN_ENV, "IU_CACHE_DIR": str(work / "sfx-cache")}
    shutil.rmtree(work / "sfx-cache", ignore_errors=True)
    rows = [("venv (console script)", [str(venv_script)], venv_env, 100),
            ("single-file executable", [str(exe)], sfx_env, 300),
            ("one-folder build", [str(folder_exe)], CLEAN_ENV, 300),
            ("(bare `python -c pass`, for reference)", [sys.executable, "-c", "pass"], venv_env, 0)]
    for name, argv, env, target in rows:
        if not target:
            wall, cpu = _startup_ms(argv, env)
            print(f"| {name} | {wall:.0f} ({cpu:.0f}) | | |")
            continue
        version, version_cpu = _startup_ms([*argv, "--version"], env)
        help_ms, help_cpu = _startup_ms([*argv, "--help"], env)
        ok = "ok" if max(version, help_ms) <= target else "MISSED"
        print(f"| {name} | {version:.0f} ({version_cpu:.0f}) | {help_ms:.0f} ({help_cpu:.0f}) | ≤ {target} {ok} |")

    firsts = []
    for i in range(5):  # the first run of a new version unpacks it into the cache
        env = {**CLEAN_ENV, "IU_CACHE_DIR": str(work / f"sfx-first-{i}")}
        start = time.perf_counter()
        subprocess.run([str(exe), "--version"], stdout=subprocess.DEVNULL, env=env, check=True)
        firsts.append((time.perf_counter() - start) * 1000)
        shutil.rmtree(work / f"sfx-first-{i}")
    print(f"| single-file executable, first run (unpacks; median of 5) | {statistics.median(firsts):.0f} | | |")

    print(f"\n### imaging {src.name} ({src.stat().st_size / MiB:.0f} MiB), level 3, median of {reps}, interleaved\n")
    cmds = {"venv": ([str(venv_script)], venv_env), "single-file executable": ([str(exe)], sfx_env),
            "one-folder build": ([str(folder_exe)], CLEAN_ENV)}
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    cpus: dict[str, list[float]] = {name: [] for name in cmds}
    out = work / "release-bench.img.zst"
    names = list(cmds)
    for rep in range(reps):
        for name in names[rep % 3:] + names[: rep % 3]:  # each program first in turn
            argv, env = cmds[name]
            subprocess.run(["sync"], check=True)
            before = os.times()
            start = time.perf_counter()
            subprocess.run([*argv, "image", "--force", str(src), str(out)], stdout=subprocess.DEVNULL, env=env,
                           check=True)
            walls[name].append(time.perf_counter() - start)
            after = os.times()
            cpus[name].append(after.children_user - before.children_user + after.children_system
                              - before.children_system)
    out.unlink(missing_ok=True)
    venv_wall = statistics.median(walls["venv"])
    print("| program | MiB/s | × venv | CPU s (median) | every run, s |\n|---|---:|---:|---:|---|")
    for name, ws in walls.items():
        wall = statistics.median(ws)
        runs = " ".join(f"{w:.2f}" for w in ws)
        print(f"| {name} | {src.stat().st_size / MiB / wall:.0f} | {venv_wall / wall:.3f} | "
              f"{statistics.median(cpus[name]):.1f} | {runs} |")
    shutil.rmtree(folder_root, ignore_errors=True)
    shutil.rmtree(work / "sfx-cache", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/iu-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/iu-bench"))
    ap.add_argument("--dist", type=Path, default=REPO / "dist")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bench_release(args.corpus / "mixed.raw", args.work, args.reps, args.dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
