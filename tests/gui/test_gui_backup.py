"""backup-disk from the GUI: pick a real GPT disk on a loop device, back it up used-only into a set, pause
(nothing read, nothing written) and resume; cancel and resume from the CLI.  Either way the set's image
equals the one ``backup-disk`` makes (same data frames and digests) and the manifest is complete."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backup.diskbuild import Disk, make_simple_disk
from conftest import cli, need_tools
from gui.guihelpers import block_idle, block_reads, image_digests, run, screen_text, wait_for
from imagetools import data_frames
from imaging_utility.gui.app import ImagingApp
from imaging_utility.gui.dialogs import ChooseScreen
from imaging_utility.gui.form import FormScreen
from imaging_utility.gui.op_restore import RestoreOperation
from imaging_utility.gui.op_verify import VerifyOperation
from imaging_utility.gui.operation import BackupSet
from imaging_utility.gui.picker import open_selection
from imaging_utility.ops.inventory import list_volumes
from imaging_utility.progress import JobControl, no_progress


@pytest.fixture(scope="module")
def simple(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    need_tools("sgdisk", "mkfs.fat", "mkfs.ext4")
    return make_simple_disk(tmp_path_factory.mktemp("gui-backup"))


@pytest.fixture
def disk(simple: Disk, loopdev: Callable[..., str]) -> str:
    return loopdev(simple.path)


def name_of(dev: str) -> str:
    return Path(dev).name


async def start_backup(pilot: Any, app: ImagingApp, set_dir: Path, rate: str) -> None:
    await wait_for(pilot, lambda: bool(app.screen.query("DataTable")), what="the picker")
    await pilot.press("enter")  # the disk is the first row, its partitions below it
    await wait_for(pilot, lambda: isinstance(app.screen, ChooseScreen), what="the operations of a disk")
    await pilot.press("down", "enter")  # image, then backup-disk
    await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.ready, what="the form")
    assert isinstance(app.screen, FormScreen) and app.screen.operation.key == "backup-disk"
    app.screen.set_values({"dir": str(set_dir), "max_throughput": rate})
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.running, what="the job to start")


def done(app: ImagingApp) -> int:
    ev = app.dashboard.job.snapshot() if app.dashboard else None
    return ev.done if ev is not None else 0


def cli_set(disk: str, tmp_path: Path) -> Path:
    ref = tmp_path / "cli-set"
    cli("backup-disk", disk, ref)
    return ref


def same_set(gui: Path, ref: Path, dev: str) -> None:
    image = f"{name_of(dev)}.img.zst"
    assert data_frames(gui / image) == data_frames(ref / image)
    assert image_digests(str(gui / image)) == image_digests(str(ref / image))
    manifest = json.loads((gui / "backup.manifest.json").read_text())
    assert [d["status"] for d in manifest["disks"]] == ["complete"]
    assert cli("verify", gui).returncode == 0


def test_backup_disk_pause_resume_equals_cli(tmp_path: Path, disk: str) -> None:
    set_dir = tmp_path / "gui-set"
    image = set_dir / f"{name_of(disk)}.img.zst"

    async def go() -> None:
        app = ImagingApp(volumes=lambda: [v for v in list_volumes() if v.path == disk])
        async with app.run_test(size=(100, 32)) as pilot:
            await start_backup(pilot, app, set_dir, "2M")
            await wait_for(pilot, lambda: done(app) >= 4 << 20 and image.exists(), what="4 MiB backed up")
            await pilot.press("p")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "paused",
                           what="the engine to report paused")
            assert "PAUSED" in screen_text(app)
            await wait_for(pilot, lambda: block_idle(disk), timeout=10, what="readahead to settle")
            before = (block_reads(disk), image.stat().st_size, done(app))
            assert before[2] < 24 << 20, "paused before the end"
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.0:
                await pilot.pause(0.1)
            assert (block_reads(disk), image.stat().st_size, done(app)) == before, "work went on while paused"
            await pilot.press("p")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "done",
                           timeout=120, what="the job to finish")
            # the log pane wraps a long path anywhere: compare without the line breaks and padding
            await wait_for(pilot, lambda: "backup.manifest.json" in "".join(screen_text(app).split()),
                           timeout=30, what="the summary naming the manifest")
            await pilot.press("q")

    run(go())
    ref = cli_set(disk, tmp_path)
    same_set(set_dir, ref, disk)
    # the set, opened in the GUI: verify checks its disk, restore writes what the command writes
    sel = open_selection(str(set_dir))
    assert isinstance(sel, BackupSet)
    warnings: list[str] = []
    lines = VerifyOperation().plan(sel, {"quick": False, "samples": "", "seed": "", "hash": ""}).run(
        no_progress, JobControl(), warnings.append)
    assert f"disk {name_of(disk)}:" in lines and lines[-1].endswith(": OK") and not warnings
    op = RestoreOperation()
    assert [f.default for f in op.fields(sel) if f.name == "disk"] == [name_of(disk)]
    values: dict[str, str | bool] = {"disk": name_of(disk), "target": str(tmp_path / "gui.raw"), "force": False,
                                     "verify": True, "threads": ""}
    plan = op.plan(sel, values)
    assert plan.command == shlex.join(["imaging-utility", "restore", "--disk", name_of(disk), "--verify",
                                       str(set_dir), str(tmp_path / "gui.raw")])
    plan.run(no_progress, JobControl(), warnings.append)
    cli("restore", "--disk", name_of(disk), ref, tmp_path / "cli.raw")
    assert (tmp_path / "gui.raw").read_bytes() == (tmp_path / "cli.raw").read_bytes()


def test_backup_disk_cancel_then_resume_from_cli(tmp_path: Path, disk: str) -> None:
    set_dir = tmp_path / "gui-set"
    resume: list[str] = []

    async def go() -> None:
        app = ImagingApp(volumes=lambda: [v for v in list_volumes() if v.path == disk])
        async with app.run_test(size=(100, 32)) as pilot:
            await start_backup(pilot, app, set_dir, "1M")
            await wait_for(pilot, lambda: done(app) >= 2 << 20, what="2 MiB backed up")
            await pilot.press("c")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "cancelled",
                           what="the job to stop")
            assert app.dashboard is not None and app.dashboard.job.plan.resume_command
            resume.extend(shlex.split(app.dashboard.job.plan.resume_command))
            await pilot.press("q")

    run(go())
    manifest = json.loads((set_dir / "backup.manifest.json").read_text())
    assert [d["status"] for d in manifest["disks"]] != ["complete"]
    assert resume[:2] == ["imaging-utility", "backup-disk"] and "--resume" in resume and resume[-1] == str(set_dir)
    cli(*resume[1:])
    same_set(set_dir, cli_set(disk, tmp_path), disk)
