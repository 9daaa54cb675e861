"""Restore through the GUI: a mounted target and a smaller one are refused, nothing is written until the
word is typed, then the device holds the image's bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fsbuild
from conftest import cli
from devices.devhelpers import mkfs_ext4, mounted
from gui.guihelpers import run, screen_text, wait_for
from imagetools import mixed_bytes
from imaging_utility.errors import RefusedError
from imaging_utility.gui.app import ImagingApp
from imaging_utility.gui.dialogs import ChooseScreen, ConfirmScreen
from imaging_utility.gui.form import FormScreen

MiB = 1 << 20


def sha(path: str, length: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length) if length else f.read()).hexdigest()


async def restore_form(pilot: Any, app: ImagingApp) -> FormScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, ChooseScreen) and "Restore:" in screen_text(app),
                   what="the operations of the image")
    assert "Verify:" in screen_text(app) and "Image:" not in screen_text(app)
    await pilot.press("down", "enter")  # verify is first, then restore
    await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.ready, what="the restore form")
    assert isinstance(app.screen, FormScreen) and app.screen.operation.key == "restore"
    return app.screen


async def refused(pilot: Any, app: ImagingApp, form: FormScreen, target: str) -> str:
    form.set_values({"target": target})
    await pilot.press("ctrl+s")
    await pilot.pause(0.3)
    assert app.screen is form, "a refused restore stays on the form"
    return str(form.query_one("#error").render())


def test_restore_refusals_and_typed_confirmation(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    data = mixed_bytes(8 * MiB, seed=23)
    (tmp_path / "src.raw").write_bytes(data)
    image = tmp_path / "src.img"
    cli("image", tmp_path / "src.raw", image)
    (tmp_path / "small.raw").write_bytes(b"\x55" * (4 * MiB))
    small = loopdev(tmp_path / "small.raw")
    (tmp_path / "busy.raw").write_bytes(bytes(16 * MiB))
    busy = loopdev(tmp_path / "busy.raw")
    mkfs_ext4(busy)
    (tmp_path / "target.raw").write_bytes(b"\xaa" * (16 * MiB))
    target = loopdev(tmp_path / "target.raw")
    before = {dev: sha(dev) for dev in (small, target)}

    with mounted(busy, tmp_path / "mnt"):
        async def go() -> None:
            app = ImagingApp(volumes=lambda: [], initial=str(image))
            async with app.run_test(size=(100, 32)) as pilot:
                form = await restore_form(pilot, app)
                error = await refused(pilot, app, form, busy)
                assert "in use" in error and "mounted read-write" in error, error
                error = await refused(pilot, app, form, small)
                assert f"holds {4 * MiB} bytes, the image needs {8 * MiB}" in error, error
                # A device that fits: the confirmation describes it and wants the word.
                form.set_values({"target": target})
                await pilot.press("ctrl+s")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
                text = screen_text(app)
                name = os.path.basename(target)  # the device's name is typed, as the command asks for it
                assert f"{target}: 16.00 MiB block device" in text and f"Type '{name}'" in text, text
                await pilot.press(*"yes", "enter")
                await pilot.pause(0.3)
                assert isinstance(app.screen, ConfirmScreen), "'yes' is not the device's name"
                await pilot.click("#accept")  # disabled: does nothing
                await pilot.pause(0.3)
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is form, what="back to the form")
                assert sha(target) == before[target], "written without confirmation"
                await pilot.press("ctrl+s")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
                await pilot.press(*name, "enter")
                await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "done",
                               timeout=60, what="the restore")
                await pilot.press("q")

        run(go())
    # The mounted filesystem writes its own journal and superblock, so its bytes move anyway: what
    # matters is that the image was not written over it.
    assert sha(busy, 8 * MiB) != hashlib.sha256(data).hexdigest()
    assert subprocess.run(["e2fsck", "-fn", busy], capture_output=True).returncode == 0
    assert sha(small) == before[small]
    assert sha(target, 8 * MiB) == hashlib.sha256(data).hexdigest()
    with open(target, "rb") as f:
        f.seek(8 * MiB)
        assert f.read() == b"\xaa" * (8 * MiB), "only the image's length is written"


def test_whole_disk_onto_a_larger_and_a_smaller_disk(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    """A whole-disk GPT image onto disks of other sizes, as ``restore`` writes it: the confirmation shows the
    table the disk gets; on a larger disk the backup GPT moves to its end, on a smaller one the form refuses
    until "allow smaller" is ticked; the partitions hold the image's bytes.  The GUI before refused any disk
    of another size and named the command instead."""
    from backup.diskbuild import make_simple_disk, sgdisk_ok, sha256_range
    from imaging_utility.gui.op_restore import RestoreOperation
    from imaging_utility.gui.picker import open_selection
    from imaging_utility.progress import JobControl, no_progress

    need = make_simple_disk(tmp_path)
    image = tmp_path / "simple.img.zst"
    cli("image", "--used-only", need.path, image)
    (tmp_path / "big.raw").write_bytes(b"\xaa" * (32 * MiB))
    (tmp_path / "small.raw").write_bytes(b"\xaa" * (21 * MiB))
    big, small = loopdev(tmp_path / "big.raw"), loopdev(tmp_path / "small.raw")
    op, sel = RestoreOperation(), open_selection(str(image))
    for target, size, fit in ((big, 32 * MiB, False), (small, 21 * MiB, True)):
        values: dict[str, str | bool] = {"target": target, "verify": True, "allow_smaller": fit}
        if fit:
            with pytest.raises(RefusedError, match="--allow-smaller"):
                op.plan(sel, {**values, "allow_smaller": False})
        plan = op.plan(sel, values)
        assert plan.confirmation is not None and plan.confirmation.typed == os.path.basename(target)
        shown = "\n".join(plan.confirmation.lines)
        assert "partition 2: 8.00 MiB at 9.00 MiB" in shown, shown
        assert ("larger; the backup GPT goes to its end" if size > need.size else "smaller") in shown, shown
        with pytest.raises(RefusedError, match="not confirmed"):
            plan.run(no_progress, JobControl(), print)
        plan.confirmed = True
        warnings: list[str] = []
        lines = plan.run(no_progress, JobControl(), warnings.append)
        assert "partition table rewritten for the target" in lines[0] and not warnings, (lines, warnings)
        sgdisk_ok(target)
        assert sha256_range(target, 17 * MiB, 2 * MiB) == sha256_range(need.path, 17 * MiB, 2 * MiB)  # raw bytes
        part = tmp_path / "p2.raw"  # the ext4, used-only: what fsck and its files see
        with open(target, "rb") as f:
            f.seek(9 * MiB)
            part.write_bytes(f.read(8 * MiB))
        assert fsbuild.fsck(part, "ext").returncode == 0
        assert fsbuild.read_files(part, "ext") == need.filesystems[2][1]
