"""The fuzz harnesses (fuzz/README.md) in the test suite: an 8-second coverage-guided run of each harness,
which first executes every seed and every crash ever found, and (``-m fuzz``) the 10-minute runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "fuzz" / "run.py"
HARNESSES = ("metadata", "image", "servers", "partitions", "filesystems", "linuxfs", "wof")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _crash_files() -> set[Path]:
    return set((ROOT / "fuzz" / "crashes").rglob("*"))


def test_every_harness_has_seeds_and_a_crash_folder() -> None:
    for name in HARNESSES:
        assert (ROOT / "fuzz" / f"fuzz_{name}.py").is_file()
        assert any((ROOT / "fuzz" / "corpus" / name).iterdir()), name
        assert (ROOT / "fuzz" / "crashes" / name).is_dir()
    size = sum(p.stat().st_size for p in (ROOT / "fuzz" / "corpus").rglob("*") if p.is_file())
    assert size < 2 << 20, "keep the seed corpus small"


def test_short_fuzz_run_of_each_harness(tmp_path: Path) -> None:
    """Each run starts by executing every seed and every crash ever kept: the regression tests."""
    before = _crash_files()
    proc = _run("--seconds", "8", "--jobs", "3", "--logs", str(tmp_path), timeout=900)
    new = _crash_files() - before
    assert proc.returncode == 0 and not new, proc.stdout + "".join(
        (tmp_path / f"{n}.log").read_text()[-3000:] for n in HARNESSES if (tmp_path / f"{n}.log").exists())


@pytest.mark.fuzz
@pytest.mark.parametrize("name", HARNESSES)
def test_ten_minute_fuzz_run(name: str, tmp_path: Path) -> None:
    proc = _run(name, "--seconds", "600", "--logs", str(tmp_path), timeout=1800)
    assert proc.returncode == 0, proc.stdout + (tmp_path / f"{name}.log").read_text()[-5000:]
