"""Throttle (token bucket) and parse_rate."""

from __future__ import annotations

import threading
import time

import pytest

from imaging_utility.devices.throttle import BURST_SECONDS, Throttle, parse_rate
from imaging_utility.errors import UsageError

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(("text", "rate"), [
    ("100M", 100 * M), ("100m", 100 * M), ("100MB", 100 * M), ("100MiB", 100 * M), ("100 MiB/s", 100 * M),
    ("1k", K), ("1K", K), ("1KiB", K), ("2kb", 2 * K), ("1.5G", 3 * G // 2), ("1T", T), ("4096", 4096),
    ("4096B", 4096), (" 50M ", 50 * M), ("10M/s", 10 * M),
])
def test_parse_rate(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "M", "abc", "10X", "-5M", "0", "0.1", "1.2.3M", "10 MBps", "iB", "5iB",
                                  "10MM", "1e6"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid rate") as exc:
        parse_rate(text)
    assert exc.value.exit_code == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_holds_with_simulated_clock() -> None:
    clock = FakeClock()
    rate = 50 * 1000 * 1000
    throttle = Throttle(rate, clock=clock, sleep=clock.sleep)
    start = clock.now
    sent = 0
    while sent < 2 * rate:  # ~2 seconds' worth in 1 MiB chunks
        throttle.consume(M)
        sent += M
        clock.now += 0.0001  # the "work" itself is nearly free
    assert sent / (clock.now - start) == pytest.approx(rate, rel=0.01)


def test_burst_is_capped_after_idle() -> None:
    clock = FakeClock()
    rate = 1000
    throttle = Throttle(rate, clock=clock, sleep=clock.sleep)
    clock.now += 3600  # an hour idle earns only BURST_SECONDS of credit
    throttle.consume(int(rate * BURST_SECONDS))
    assert clock.slept == []
    throttle.consume(500)
    assert clock.slept == [pytest.approx(0.5)]
    throttle.consume(0)
    assert len(clock.slept) == 1


def test_rate_holds_in_real_time_across_threads() -> None:
    rate = 50 * 1000 * 1000
    throttle = Throttle(rate)
    chunk = 256 * 1024
    per_thread = rate  # two threads, ~2 seconds in all

    def work() -> None:
        for _ in range(per_thread // chunk):
            throttle.consume(chunk)

    threads = [threading.Thread(target=work) for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    total = 2 * (per_thread // chunk) * chunk
    assert total / elapsed == pytest.approx(rate, rel=0.10)


def test_rejects_non_positive_rate() -> None:
    with pytest.raises(UsageError):
        Throttle(0)
