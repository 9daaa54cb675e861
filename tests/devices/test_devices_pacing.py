"""--adaptive-rate-limit: the PSI and diskstats readers on the real /proc, the controller's rules on a
simulated clock, and the engine against a FUSE source whose read latency the test raises and lowers."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devices.devhelpers import slow_fuse
from imaging_utility.devices.pacing import (
    MIN_RATE,
    AdaptiveThrottle,
    device_name,
    read_diskstats,
    read_pressure,
)
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import Interrupted
from imaging_utility.ops.capture import CaptureOptions, capture
from imaging_utility.progress import JobControl, ProgressEvent

MiB = 1 << 20


def test_pressure_and_diskstats_from_proc(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    if Path("/proc/pressure/io").exists():
        first = read_pressure()
        assert first is not None and first >= 0
        assert read_pressure() >= first  # type: ignore[operator]
    assert read_pressure(str(tmp_path / "absent")) is None
    (tmp_path / "disk.raw").write_bytes(b"\x01" * (4 * MiB))
    dev = loopdev(tmp_path / "disk.raw")
    name = device_name(dev)
    assert name is not None and name.startswith("loop")
    before = read_diskstats(name)
    assert before is not None
    subprocess.run(["dd", f"if={dev}", "of=/dev/null", "bs=1M", "iflag=direct", "status=none"], check=True)
    after = read_diskstats(name)
    assert after is not None and after[0] - before[0] >= 4 * MiB // 512
    assert device_name(str(tmp_path / "disk.raw")) is None
    assert read_diskstats("no-such-device") is None


class Sim:
    """A simulated clock and sleep, and the PSI counter a test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.psi = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def pressure(self) -> float:
        return self.psi


def drive(t: AdaptiveThrottle, sim: Sim, seconds: float, *, read_time: float, others_busy: float = 0.0) -> None:
    """Read 1 MiB chunks for ``seconds``: each read takes ``read_time``; others wait ``others_busy`` of the time."""
    end = sim.now + seconds
    while sim.now < end:
        start = sim.now
        t.consume(MiB)
        sim.now += read_time
        t.observe(MiB, read_time)
        sim.psi += (sim.now - start) * (others_busy + read_time / max(sim.now - start, 1e-9)) * 1e6


def test_controller_backs_off_and_recovers_on_latency() -> None:
    sim = Sim()
    t = AdaptiveThrottle(pressure=None, clock=sim.clock, sleep=sim.sleep)
    drive(t, sim, 10, read_time=0.004)  # quiet: 250 MiB/s, 4 ms per MiB
    assert t.rate == 0 and t.reductions == 0
    drive(t, sim, 2, read_time=0.040)  # someone else hammers the disk: 40 ms per MiB
    assert 0 < t.rate <= 25 * MiB * 0.5 + 1, t.rate
    drive(t, sim, 4, read_time=0.040)
    assert t.rate == MIN_RATE and "latency" in t.last_reason
    drive(t, sim, 20, read_time=0.004)  # they stopped
    assert t.rate == 0, "the limit is lifted again"
    assert t.limited_seconds > 5 and t.lowest == MIN_RATE


def test_controller_follows_pressure_and_keeps_a_ceiling() -> None:
    sim = Sim()
    t = AdaptiveThrottle(ceiling=100 * MiB, pressure=sim.pressure, clock=sim.clock, sleep=sim.sleep)
    drive(t, sim, 5, read_time=0.001)
    assert t.rate == 100 * MiB and t.reductions == 0, "the ceiling holds while nobody waits"
    drive(t, sim, 3, read_time=0.001, others_busy=0.5)  # others stall on I/O half the time
    assert t.rate < 30 * MiB and "others waited" in t.last_reason
    drive(t, sim, 20, read_time=0.001)
    assert t.rate == 100 * MiB, "back to the ceiling, never above it"
    assert t.stats()["reductions"] == t.reductions > 0


def test_own_reads_are_not_pressure() -> None:
    sim = Sim()
    t = AdaptiveThrottle(pressure=sim.pressure, clock=sim.clock, sleep=sim.sleep)
    drive(t, sim, 10, read_time=0.010)  # our reads stall all the time, nobody else does
    assert t.rate == 0 and t.reductions == 0


def test_engine_slows_down_while_the_source_is_slow_and_recovers(tmp_path: Path) -> None:
    """A real FUSE source whose reads the test makes slow, then fast again.  PSI is left out here: on a
    shared machine other programs' I/O would move it; the controller's PSI rules are tested above."""
    delay = tmp_path / "delay"
    delay.write_text("0")
    samples: list[tuple[float, int, int]] = []  # (time, rate limit, bytes done)
    control = JobControl()
    errors: list[BaseException] = []

    def progress(ev: ProgressEvent) -> None:
        samples.append((time.monotonic(), ev.rate_limit, ev.done))

    with slow_fuse(tmp_path / "mnt", 64 << 30, delay) as path, FileSource(path) as source:
        opts = CaptureOptions(identity={"kind": "file", "size": source.size}, digests=(), level=1, threads=2)
        opts.throttle = AdaptiveThrottle(pressure=None)

        def work() -> None:
            try:
                capture(source, str(tmp_path / "img"), opts, progress, control)
            except Interrupted:
                pass
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        thread = threading.Thread(target=work)
        thread.start()
        try:
            def wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
                start = time.monotonic()
                while not cond():
                    assert not errors, errors
                    assert time.monotonic() - start < timeout, f"{what} not within {timeout} s: {samples[-5:]}"
                    time.sleep(0.1)
                return time.monotonic() - start

            def rate(since: float) -> float:
                window = [s for s in samples if s[0] >= since]
                return (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0])

            time.sleep(3)
            quiet = rate(time.monotonic() - 2)
            assert all(s[1] == 0 for s in samples), "no limit while the source is quick"
            delay.write_text("0.02")  # 20 ms per 128 KiB read: ~160 ms per MiB
            slowed = time.monotonic()
            took = wait(lambda: samples[-1][0] > slowed and samples[-1][1] > 0, 10, "a rate limit")
            wait(lambda: samples[-1][1] <= MIN_RATE * 2, 20, "the limit to come down")
            delay.write_text("0")
            calm = time.monotonic()
            back = wait(lambda: samples[-1][0] > calm and samples[-1][1] == 0, 40, "the limit to be lifted")
            time.sleep(2)
            recovered = rate(time.monotonic() - 1.5)
            print(f"quiet {quiet / MiB:.0f} MiB/s, limited after {took:.1f} s, lifted after {back:.1f} s, "
                  f"then {recovered / MiB:.0f} MiB/s")
            assert took < 8, "the limit comes within seconds"
            assert recovered > quiet / 3
        finally:
            control.cancel()
            thread.join(30)
    assert not errors, errors


def test_a_latency_that_stays_high_is_learnt_again() -> None:
    sim = Sim()
    t = AdaptiveThrottle(pressure=None, clock=sim.clock, sleep=sim.sleep)
    drive(t, sim, 10, read_time=0.004)
    drive(t, sim, 5, read_time=0.040)
    assert t.rate == MIN_RATE
    drive(t, sim, 120, read_time=0.040)  # the disk is just slower from here on (an inner zone)
    assert t.rate == 0, "after a minute the slower latency is the quiet one"
