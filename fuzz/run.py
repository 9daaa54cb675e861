"""Run the fuzz harnesses (coverage-guided, atheris/libFuzzer), or replay their corpora and crashes.

    .venv/bin/python fuzz/run.py                      # every harness for 10 minutes, two at a time
    .venv/bin/python fuzz/run.py --seconds 20 image   # one harness, 20 s
    .venv/bin/python fuzz/run.py --replay             # run every seed and every kept crash once

A run first executes every seed (``fuzz/corpus/<harness>``) and every kept crash
(``fuzz/crashes/<harness>``), then mutates; what it discovers goes to a scratch directory (``--merge``
adds inputs that reach new code to the seeds).  A crash, timeout or out-of-memory input is written to
``fuzz/crashes/<harness>/``: fix the bug and keep the file, so every later run (the test suite's
8-second runs too) executes it first.  Exit status: 0 when every run was clean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
HARNESSES = {  # name -> libFuzzer -max_len
    "metadata": 65536,
    "image": 131072,
    "servers": 8192,
    "partitions": 16384,
    "filesystems": 4096,
    "linuxfs": 4096,
    "wof": 65536,
}
RSS_LIMIT_MB = 2048  # more than this for one input is unbounded memory
TIMEOUT_S = 60  # more than this for one input is unbounded time (generous: the machine may be busy)


def _cmd(name: str, *args: str) -> list[str]:
    # -len_control=0: inputs may use max_len at once (slow harnesses would otherwise stay at a few bytes)
    return [sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-timeout={TIMEOUT_S}", f"-max_len={HARNESSES[name]}", "-len_control=0", *args]


def _crashes(name: str) -> Path:
    folder = FUZZ / "crashes" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fuzz(name: str, seconds: int, merge: bool, log: Path) -> tuple[str, int, str]:
    before = set(_crashes(name).iterdir())  # (.gitkeep keeps the folder in git)
    with tempfile.TemporaryDirectory(prefix=f"iu-fuzz-{name}-") as work:
        with open(log, "w") as out:
            proc = subprocess.run(
                # every seed and every kept crash runs first (libFuzzer reads all corpus folders before
                # it mutates); new inputs go to the first folder, a scratch one
                _cmd(name, f"-max_total_time={seconds}", f"-artifact_prefix={_crashes(name)}/",
                     "-print_final_stats=1", work, str(FUZZ / "corpus" / name), str(_crashes(name))),
                cwd=FUZZ, stdout=out, stderr=subprocess.STDOUT, check=False,
            )
        if merge and proc.returncode == 0:
            subprocess.run(_cmd(name, "-merge=1", str(FUZZ / "corpus" / name), work), cwd=FUZZ,
                           capture_output=True, check=False)
    new = sorted(set(_crashes(name).iterdir()) - before)
    return name, proc.returncode, ", ".join(p.name for p in new)


def replay(name: str, log: Path) -> tuple[str, int, str]:
    """Every seed and every kept crash input, once each."""
    inputs = [p for folder in (FUZZ / "corpus" / name, _crashes(name)) for p in sorted(folder.iterdir())
              if not p.name.startswith(".")]
    with open(log, "w") as out:
        proc = subprocess.run(_cmd(name, "-runs=1", *map(str, inputs)), cwd=FUZZ, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    return name, proc.returncode, f"{len(inputs)} inputs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("harness", nargs="*", choices=[[], *HARNESSES], help="default: all")
    p.add_argument("--seconds", type=int, default=600, help="per harness (default 600)")
    p.add_argument("--jobs", type=int, default=2, help="harnesses at once (default 2)")
    p.add_argument("--replay", action="store_true", help="run the seeds and kept crashes once, no fuzzing")
    p.add_argument("--merge", action="store_true", help="add inputs that reach new code to the seeds")
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "iu-fuzz-logs")
    args = p.parse_args(argv)
    names = args.harness or list(HARNESSES)
    args.logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        if args.replay:
            runs = [pool.submit(replay, n, args.logs / f"replay-{n}.log") for n in names]
        else:
            runs = [pool.submit(fuzz, n, args.seconds, args.merge, args.logs / f"{n}.log") for n in names]
        results = [r.result() for r in runs]
    failed = 0
    for name, code, note in results:
        log = args.logs / (f"replay-{name}.log" if args.replay else f"{name}.log")
        print(f"{name:<12} {'ok' if code == 0 else f'FAILED (exit {code})'}  {note}  log: {log}")
        failed += code != 0
    print(f"{len(results)} harness(es) in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
