"""What the GUI's live dashboard costs: imaging mixed.raw from ``gui`` in a real terminal vs the CLI.

    .venv/bin/python benchmarks/run.py --only gui [--reps 3]

Needs root (the GUI images block devices: mixed.raw is attached read-only as a loop device, warmed
into its page cache) and tmux (the GUI runs in a real terminal, driven with send-keys).  Each round
images the device once with ``imaging-utility image`` and once from ``imaging-utility gui DEVICE``
(Start on the default form, quit when DONE), interleaved.  Throughput is the engine's own figure for
both (``--json`` ``throughput_mib_s`` and the GUI's summary line), so application start-up is not
counted; memory is the peak RSS of the whole process (GNU time).  Targets: the dashboard costs at most
3% throughput and 30 MiB of memory.

A third run per round drives the same app headless (``App.run_test``) and reads the CPU time of the
thread that draws the dashboard while the job runs: the dashboard's share of one CPU, a figure a busy
machine does not blur the way it blurs throughput.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
TOOL = [PY, "-m", "imaging_utility"]
_SUMMARY = re.compile(r"time ([\d.]+) s \(([\d.]+) s paused\), ([\d.]+) MiB/s")


Run = tuple[float, float, float]  # engine MiB/s, peak RSS MiB, CPU seconds (user + system, whole process)


def _time_file(path: str) -> tuple[float, float]:
    """(peak RSS MiB, CPU seconds) from GNU time's ``%M %U %S``."""
    rss, user, system = Path(path).read_text().split()[-3:]
    return int(rss) / 1024, float(user) + float(system)


def _cli_run(dev: str, dest: Path) -> Run:
    with tempfile.NamedTemporaryFile("r") as tf:
        out = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", tf.name, *TOOL, "image", "--force",
                              "--json", dev, str(dest)], check=True, capture_output=True, text=True).stdout
        return (float(json.loads(out)["throughput_mib_s"]), *_time_file(tf.name))


class _Tmux:
    def __init__(self) -> None:
        self.socket = f"iu-bench-gui-{os.getpid()}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True).stdout

    def wait(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self("capture-pane", "-p", "-t", "gui"):
            if time.monotonic() > deadline:
                raise SystemExit(f"gui benchmark: {text!r} did not appear:\n{self('capture-pane', '-p', '-t', 'gui')}")
            time.sleep(0.5)  # rare polls: the terminal's reader must not steal the engine's CPU

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, capture_output=True)


def _gui_run(dev: str, work: Path) -> Run:
    log = work / "gui.log"
    log.unlink(missing_ok=True)
    rss = work / "gui.rss"
    done = work / "gui.done"
    done.unlink(missing_ok=True)
    env = f"PYTHONPATH={shlex.quote(os.pathsep.join(sys.path))}"
    cmd = (f"cd {shlex.quote(str(work))} && {env} /usr/bin/time -f '%M %U %S' -o {shlex.quote(str(rss))} "
           f"{shlex.quote(PY)} -m imaging_utility gui --log-file gui.log {dev}; touch {shlex.quote(str(done))}")
    tmux = _Tmux()
    try:
        tmux("new-session", "-d", "-s", "gui", "-x", "120", "-y", "40", cmd)
        tmux.wait("^s Start", 60)
        tmux("send-keys", "-t", "gui", "C-s")
        tmux.wait("DONE", 3600)
        tmux("send-keys", "-t", "gui", "q")
        deadline = time.monotonic() + 60
        while not done.exists():
            if time.monotonic() > deadline:
                raise SystemExit("gui benchmark: the GUI did not exit")
            time.sleep(0.2)
    finally:
        tmux.kill()
    m = _SUMMARY.search(log.read_text())
    if m is None:
        raise SystemExit(f"gui benchmark: no summary in {log}")
    return (float(m.group(3)), *_time_file(str(rss)))


def _headless_run(dev: str, work: Path) -> tuple[float, float]:
    """(engine MiB/s, dashboard-thread CPU seconds per second of the job) from a headless GUI run."""
    proc = subprocess.run([PY, __file__, "--headless", dev, str(work)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"headless gui run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(data["mib_s"]), float(data["ui_cpu_per_s"])


def _headless(dev: str, work: str) -> None:
    import asyncio

    from imaging_utility.gui.app import ImagingApp
    from imaging_utility.gui.form import FormScreen
    from imaging_utility.ops.inventory import list_volumes

    async def drive() -> None:
        app = ImagingApp(volumes=lambda: [v for v in list_volumes() if v.path == dev], probe_volume=None,
                         initial=dev)
        async with app.run_test(size=(120, 40)) as pilot:
            while not (isinstance(app.screen, FormScreen) and app.screen.ready):
                await pilot.pause(0.1)
            app.screen.set_values({"dest": os.path.join(work, "headless.img"), "force": True})
            await pilot.press("ctrl+s")
            while app.dashboard is None:
                await pilot.pause(0.1)
            cpu0, t0 = time.thread_time(), time.monotonic()
            while app.dashboard.running or app.dashboard.state == "ready":
                await pilot.pause(1.0)
            cpu, wall = time.thread_time() - cpu0, time.monotonic() - t0
            m = _SUMMARY.search("\n".join(app.dashboard.lines))
            if m is None:
                raise SystemExit(f"headless run failed: {app.dashboard.error}")
            print(json.dumps({"mib_s": float(m.group(3)), "ui_cpu_per_s": cpu / wall}))
            await pilot.press("q")

    asyncio.run(drive())


def bench_gui(src: Path, work: Path, reps: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("gui benchmark needs root (loop device)")
    for tool in ("tmux", "losetup", "/usr/bin/time"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"gui benchmark needs {tool}")
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(src)], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = work / f"{os.path.basename(dev)}.img.zst"  # the GUI form's default DEST in its working directory
    try:
        subprocess.run(["cat", dev], stdout=subprocess.DEVNULL, check=True)  # warm the device's page cache
        runs: dict[str, list[Run]] = {"cli": [], "gui": []}
        headless: list[tuple[float, float]] = []
        for _ in range(reps):
            for name in ("cli", "gui"):
                dest.unlink(missing_ok=True)
                subprocess.run(["sync"], check=True)
                runs[name].append(_cli_run(dev, dest) if name == "cli" else _gui_run(dev, work))
            dest.unlink(missing_ok=True)
            headless.append(_headless_run(dev, work))
        dest.unlink(missing_ok=True)
        (work / "headless.img").unlink(missing_ok=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    n = src.stat().st_size
    print(f"\n## GUI dashboard cost — imaging {src.name} ({n / 2**20:,.0f} MiB) from a loop device, "
          f"{os.cpu_count()} CPUs, median of {reps}\n")
    print("| run | engine throughput | peak RSS | CPU (whole process) |\n|---|---|---|---|")
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    peak = {k: max(r[1] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
    print(f"| `imaging-utility image DEV DEST` | {med['cli']:,.1f} MiB/s | {peak['cli']:,.0f} MiB | "
          f"{cpu['cli']:.1f} s |")
    print(f"| `imaging-utility gui DEV` (tmux, 120×40, dashboard live) | {med['gui']:,.1f} MiB/s | "
          f"{peak['gui']:,.0f} MiB | {cpu['gui']:.1f} s |")
    cost = (1 - med["gui"] / med["cli"]) * 100
    extra = peak["gui"] - peak["cli"]
    print(f"\ndashboard cost: {cost:+.1f}% throughput (target ≤ 3%), {extra:+.0f} MiB peak RSS (target ≤ 30 MiB), "
          f"{cpu['gui'] - cpu['cli']:+.1f} s CPU (start-up included); every run: "
          f"cli {[round(r[0]) for r in runs['cli']]}, gui {[round(r[0]) for r in runs['gui']]} MiB/s")
    share = statistics.median(c for _, c in headless) * 100
    print(f"\nheadless (`App.run_test`, 120×40): engine {statistics.median(t for t, _ in headless):,.1f} MiB/s; the "
          f"thread drawing the dashboard used {share:.1f}% of one CPU while the job ran "
          f"({share / (os.cpu_count() or 1):.1f}% of the machine)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--headless":
        _headless(sys.argv[2], sys.argv[3])
