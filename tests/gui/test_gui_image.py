"""The GUI images a real loop device: pause (nothing read, nothing written, memory flat), resume, finish;
cancel and resume from the CLI.  Either way the image equals the CLI's (same data frames and digests)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import cli, need_root, need_tools
from gui.guihelpers import block_idle, block_reads, image_digests, rss_bytes, run, screen_text, wait_for
from imagetools import data_frames, mixed_bytes
from imaging_utility.gui.app import ImagingApp
from imaging_utility.gui.dialogs import ChooseScreen
from imaging_utility.gui.form import FormScreen
from imaging_utility.ops.inventory import list_volumes

SIZE = 32 << 20
RATE = "8M"  # slow enough to pause in the middle; pacing does not change a byte of the image


@pytest.fixture(scope="module")
def source_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_root()
    need_tools("losetup")
    path = tmp_path_factory.mktemp("gui-src") / "src.raw"
    path.write_bytes(mixed_bytes(SIZE, seed=17))
    dev = subprocess.run(["losetup", "--find", "--show", str(path)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture(scope="module")
def cli_image(tmp_path_factory: pytest.TempPathFactory, source_dev: str) -> Path:
    ref = tmp_path_factory.mktemp("gui-ref") / "cli.img"
    cli("image", source_dev, ref)
    return ref


def only(dev: str) -> Callable[[], list[Any]]:
    return lambda: [v for v in list_volumes() if v.path == dev]


async def start_image(pilot: Any, app: ImagingApp, dest: Path, rate: str = RATE) -> None:
    await wait_for(pilot, lambda: bool(app.screen.query("DataTable")) and app.screen.query_one("DataTable").row_count
                   == 1, what="the device row")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ChooseScreen), what="the operations of a disk")
    assert "Backup-disk:" in screen_text(app)
    await pilot.press("enter")  # image is first
    await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.ready, what="the image form")
    assert app.screen.operation.key == "image"
    assert isinstance(app.screen, FormScreen)
    app.screen.set_values({"dest": str(dest), "max_throughput": rate})
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.running, what="the job to start")


def done(app: ImagingApp) -> int:
    ev = app.dashboard.job.snapshot() if app.dashboard else None
    return ev.done if ev is not None else 0


def test_pause_resume_finish_equals_cli(tmp_path: Path, source_dev: str, cli_image: Path) -> None:
    dest = tmp_path / "gui.img"

    async def go() -> None:
        app = ImagingApp(volumes=only(source_dev), log_file=str(tmp_path / "gui.log"))
        async with app.run_test(size=(100, 32)) as pilot:
            await start_image(pilot, app, dest)
            await wait_for(pilot, lambda: done(app) >= 6 << 20, what="6 MiB imaged")
            reads_running = block_reads(source_dev)
            await pilot.press("p")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "paused",
                           what="the engine to report paused")
            assert "PAUSED" in screen_text(app)
            await wait_for(pilot, lambda: block_idle(source_dev), timeout=10, what="readahead to settle")
            before = (block_reads(source_dev), dest.stat().st_size, rss_bytes(), done(app))
            assert before[0][1] >= reads_running[1] > 0, "the source was being read before the pause"
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.0:
                await pilot.pause(0.1)
            after = (block_reads(source_dev), dest.stat().st_size, rss_bytes(), done(app))
            assert after[0] == before[0], "the source was read while paused"
            assert after[1] == before[1], "the image grew while paused"
            assert after[3] == before[3] < SIZE
            assert abs(after[2] - before[2]) < 8 << 20, "memory grew while paused"
            await pilot.press("p")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "done",
                           timeout=120, what="the job to finish")
            assert block_reads(source_dev)[1] > after[0][1], "reads did not start again after resume"
            text = screen_text(app)
            assert "DONE" in text and "paused" in text
            assert app.dashboard is not None and any("blake3" in line for line in app.dashboard.lines)
            await pilot.press("q")

    run(go())
    assert data_frames(dest) == data_frames(cli_image)
    assert image_digests(str(dest)) == image_digests(str(cli_image))
    logged = (tmp_path / "gui.log").exists()
    assert not logged, "no log file unless asked for"


def test_cancel_then_resume_from_cli_equals_cli(tmp_path: Path, source_dev: str, cli_image: Path) -> None:
    dest = tmp_path / "gui.img"
    resume: list[str] = []

    async def go() -> None:
        app = ImagingApp(volumes=only(source_dev))
        async with app.run_test(size=(100, 32)) as pilot:
            await start_image(pilot, app, dest)
            await wait_for(pilot, lambda: done(app) >= 4 << 20, what="4 MiB imaged")
            await pilot.press("c")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "cancelled",
                           what="the job to stop")
            text = screen_text(app)
            assert "CANCELLED" in text and "--resume" in text
            assert app.dashboard is not None and app.dashboard.job.plan.resume_command
            resume.extend(shlex.split(app.dashboard.job.plan.resume_command))
            await pilot.press("q")  # nothing runs any more: quits without asking

    run(go())
    assert dest.stat().st_size < SIZE // 4
    assert resume[0] == "imaging-utility" and "--resume" in resume and str(dest) == resume[-1]
    proc = cli(*resume[1:])
    assert "resumed at" in proc.stdout
    assert data_frames(dest) == data_frames(cli_image)
    assert image_digests(str(dest)) == image_digests(str(cli_image))


def test_quit_while_running_asks_then_cancels_cleanly(tmp_path: Path, source_dev: str) -> None:
    dest = tmp_path / "gui.img"
    log_file = tmp_path / "jobs.log"

    async def go() -> None:
        app = ImagingApp(volumes=only(source_dev), log_file=str(log_file))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("l")  # log to the file from now on
            await start_image(pilot, app, dest, rate="1M")  # 30 s: it must still run when we quit
            await wait_for(pilot, lambda: done(app) >= 1 << 20, what="1 MiB imaged")
            await pilot.press("q")
            await wait_for(pilot, lambda: "Quit while a job runs?" in screen_text(app), what="the question")
            assert "--resume" in screen_text(app)
            await pilot.press("escape")  # no: the job goes on
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "running")
            # "Cancel job and quit" and SIGTERM end it the same way; SIGTERM says so in the exit code.
            os.kill(os.getpid(), signal.SIGTERM)
            await wait_for(pilot, lambda: not app.is_running, timeout=60, what="the app to exit")
        assert app.return_value == 130

    run(go())
    assert 0 < dest.stat().st_size < SIZE // 4
    text = log_file.read_text()
    assert "imaging-utility image" in text and "cancelled at" in text and "resume with:" in text
    proc = cli("verify", dest, check=None)
    assert proc.returncode == 8 and "--resume" in proc.stderr, "a partial image says how to continue it"
