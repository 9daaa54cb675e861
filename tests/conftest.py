"""Shared test helpers.

Tests that need an external tool or root skip with a reason on a laptop, but in
CI (``CI`` set) a missing requirement is a failure: nothing may silently skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.register_profile("soak", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

IN_CI = bool(os.environ.get("CI"))

# Session fixtures shared by several test modules (one real disk set for the whole run; the
# SeaweedFS S3 endpoint).
pytest_plugins = ["backup.backuphelpers", "storage.s3server"]


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI requirement missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need_tools(*names: str) -> None:
    """Skip (fail in CI) unless every named executable is on PATH."""
    for name in names:
        if shutil.which(name) is None:
            _missing(f"needs the '{name}' tool (scripts/test installs it when run as root)")


def need_root() -> None:
    if os.geteuid() != 0:
        _missing("needs root (loop devices, mounts)")


def cli(*args: str | os.PathLike[str], check: int | None = 0, input: bytes | None = None,
        timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``imaging-utility ARGS`` as a real process; assert its exit code when ``check`` is set."""
    proc = subprocess.run(
        [sys.executable, "-m", "imaging_utility", *map(str, args)],
        capture_output=True, text=True, input=input.decode() if input else None, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check is not None and proc.returncode != check:
        raise AssertionError(
            f"exit {proc.returncode} (expected {check}) for {args}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def loopdev() -> Iterator[object]:
    """Factory fixture: ``loopdev(path, sector_size=512, partscan=False) -> '/dev/loopN'``; detached after."""
    need_root()
    need_tools("losetup")
    made: list[str] = []

    def attach(path: Path | str, sector_size: int = 512, partscan: bool = False, read_only: bool = False) -> str:
        cmd = ["losetup", "--find", "--show", "--sector-size", str(sector_size)]
        if partscan:
            cmd.append("-P")
        if read_only:
            cmd.append("-r")
        dev = subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True).stdout.strip()
        made.append(dev)
        return dev

    yield attach
    for dev in made:  # partitions a restore added (BLKPG) outlive the loop device unless removed first
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The 10-minute fuzz runs (``fuzz`` marker) run only when ``-m`` names them."""
    if "fuzz" in (config.getoption("markexpr") or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("fuzz") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.get_closest_marker("fuzz") is None]
