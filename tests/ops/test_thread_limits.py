"""``--threads`` is memory: each thread keeps chunks in flight.  Out-of-range values are usage errors
(exit 2, never an internal error), and every job lowers its threads until its chunks in flight fit the
memory budget, whatever ``--threads`` asks and whatever chunk size an image declares (``image --threads
100000`` was OOM-killed after allocating 21 GB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from imaging_utility import limits
from imaging_utility.image.reader import open_image
from imaging_utility.image.verify import verify_image
from imaging_utility.ops.imaging import ImageRequest, run_image
from imaging_utility.ops.restore import restore
from imaging_utility.progress import ProgressEvent

MIB = 1 << 20


@pytest.mark.parametrize("value", ["0", "-1", "100000", "two"])
@pytest.mark.parametrize("command", ["image", "backup-disk", "restore", "verify"])
def test_out_of_range_threads_are_usage_errors(command: str, value: str, tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(bytes(MIB))
    argv = {"image": ["image", src, tmp_path / "i.img"], "backup-disk": ["backup-disk", src, tmp_path / "set"],
            "restore": ["restore", src, tmp_path / "r.raw"], "verify": ["verify", src]}[command]
    proc = cli(argv[0], "--threads", value, *argv[1:], check=2)
    assert "argument --threads" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_threads_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "memory_budget", lambda: 64 * MIB)
    assert limits.threads_within(1024, MIB) == 31  # (64 - 2) // 2
    assert limits.threads_within(4, MIB) == 4
    assert limits.threads_within(1024, 256 * MIB) == 1  # never below one
    assert limits.threads_within(1024, MIB, fixed=4) == 30


def test_budget_is_a_share_of_the_machine() -> None:
    budget = limits.memory_budget()
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert limits.BUDGET_FLOOR <= budget <= limits.BUDGET_CAP and budget <= max(phys // 4, limits.BUDGET_FLOOR)


def test_jobs_run_within_the_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Capture, restore and verify with --threads 1024 on 4 MiB chunks and a 64 MiB budget: each runs at
    most (64 MiB / 4 MiB - fixed) / 2 workers, and the results are right."""
    monkeypatch.setattr(limits, "memory_budget", lambda: 64 * MIB)
    src = tmp_path / "disk.raw"
    data = os.urandom(24 * MIB)
    src.write_bytes(data)
    seen: list[ProgressEvent] = []
    result = run_image(ImageRequest(str(src), str(tmp_path / "i.img"), chunk_size=4 * MIB, threads=1024),
                       progress=seen.append)
    assert result.event is not None and result.event.max_workers == 6 and result.event.max_depth <= 16
    with open_image(str(tmp_path / "i.img")) as reader:
        events: list[ProgressEvent] = []
        restore(reader, str(tmp_path / "r.raw"), threads=1024, progress=events.append)
        assert events and max(e.max_workers for e in events) == 7
        assert (tmp_path / "r.raw").read_bytes() == data
        report = verify_image(reader, threads=1024)
        assert report.ok


def test_small_source_takes_small_buffers(tmp_path: Path) -> None:
    """Chunk buffers are made as the pipeline fills and are no larger than the source: a 3 MiB file imaged
    with 1024 threads and 256 MiB chunks stays small (it took 4.2 GB, all buffers up front).  The peak is
    the child's own VmHWM: a forked child's ru_maxrss starts at the test process's size."""
    src = tmp_path / "small.raw"
    src.write_bytes(os.urandom(3 * MIB))
    wrapper = ("import runpy, sys\n"
               "try:\n    runpy.run_module('imaging_utility', run_name='__main__')\n"
               "finally:\n    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')),"
               " file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, "image", "--threads", "1024", "--chunk-size", "256M",
                           str(src), str(tmp_path / "s.img")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stderr.split("VmHWM:")[1].split()[0])
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib} KiB"
    cli("verify", tmp_path / "s.img")
