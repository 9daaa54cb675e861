"""Export from the GUI: the same file as the command; pause holds the engine (nothing written), cancel leaves
neither OUT nor OUT.partial."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import cli
from gui.guihelpers import run, screen_text, wait_for
from imagetools import mixed_bytes
from imaging_utility.errors import Interrupted
from imaging_utility.gui.app import ImagingApp
from imaging_utility.gui.dialogs import ChooseScreen
from imaging_utility.gui.form import FormScreen
from imaging_utility.gui.op_export import ExportOperation
from imaging_utility.gui.picker import open_selection
from imaging_utility.progress import JobControl, ProgressEvent

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("gui-export")
    (work / "src.raw").write_bytes(mixed_bytes(48 * MiB, seed=31))
    cli("image", "--chunk-size", "256K", work / "src.raw", work / "src.img")
    return work / "src.img"


def test_export_from_the_gui_equals_the_command(tmp_path: Path, image: Path) -> None:
    out = tmp_path / "gui.raw"

    async def go() -> None:
        app = ImagingApp(volumes=lambda: [], initial=str(image))
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ChooseScreen) and "Export:" in screen_text(app),
                           what="the operations")
            await pilot.press("down", "down", "enter")  # verify, restore, export
            await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.ready, what="the form")
            assert isinstance(app.screen, FormScreen) and app.screen.operation.key == "export"
            app.screen.set_values({"out": str(out)})
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.dashboard is not None and app.dashboard.state == "done", timeout=120,
                           what="the export")
            assert app.dashboard.job.plan.command == f"imaging-utility export {image} {out}"
            assert any("exported 48.00 MiB" in line for line in app.dashboard.lines)
            await pilot.press("q")

    run(go())
    cli("export", image, tmp_path / "cli.raw")
    assert out.read_bytes() == (tmp_path / "cli.raw").read_bytes() == (image.parent / "src.raw").read_bytes()


def test_export_pause_and_cancel(tmp_path: Path, image: Path) -> None:
    sel = open_selection(str(image))
    op = ExportOperation()
    values: dict[str, str | bool] = {f.name: f.default for f in op.fields(sel)}
    values.update(out=str(tmp_path / "p.qcow2"), threads="1")
    assert op.command(sel, values) == f"imaging-utility export --threads 1 {image} {tmp_path / 'p.qcow2'}"
    plan = op.plan(sel, values)
    control = JobControl()
    control.pause()
    seen: list[ProgressEvent] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            plan.run(seen.append, control, lambda message: None)
        except BaseException as e:  # handed to the test thread
            failed.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 60
    while not (seen and seen[-1].paused):
        assert time.monotonic() < deadline and thread.is_alive(), "never paused"
        time.sleep(0.05)
    partial = tmp_path / "p.qcow2.partial"
    before = (partial.stat().st_size, seen[-1].done)
    time.sleep(1.5)
    assert (partial.stat().st_size, seen[-1].done) == before and seen[-1].paused, "work went on while paused"
    assert before[1] < 48 * MiB
    control.resume()
    thread.join(120)
    assert not failed and (tmp_path / "p.qcow2").exists() and not partial.exists()
    cli("export", "--threads", "1", image, tmp_path / "c.qcow2")
    assert (tmp_path / "p.qcow2").read_bytes() == (tmp_path / "c.qcow2").read_bytes()

    values.update(out=str(tmp_path / "x.vhdx"))
    control = JobControl()
    control.cancel()
    with pytest.raises(Interrupted, match="export cancelled"):
        op.plan(sel, values).run(lambda ev: None, control, lambda message: None)
    assert not list(tmp_path.glob("x.vhdx*")), "a cancelled export leaves nothing"


def test_export_a_named_volume(tmp_path: Path) -> None:
    """The form's Volume field exports a volume by its serve-proxy name, as ``export --volume`` does; a name
    that is not there is refused before anything is written, with the names there are."""
    import subprocess

    from conftest import need_tools
    from imaging_utility.errors import UsageError

    need_tools("sfdisk")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(mixed_bytes(16 * MiB, seed=32))
    subprocess.run(["sfdisk", "-q", str(raw)], input=b"label: dos\nstart=2048, size=8192\nstart=10240\n",
                   check=True, capture_output=True)
    image = tmp_path / "disk.img"
    cli("image", raw, image)
    sel = open_selection(str(image))
    op = ExportOperation()
    values: dict[str, str | bool] = {f.name: f.default for f in op.fields(sel)}
    values.update(out=str(tmp_path / "gui.raw"), volume="p2")
    assert op.command(sel, values) == f"imaging-utility export --volume p2 {image} {tmp_path / 'gui.raw'}"
    op.plan(sel, values).run(lambda ev: None, JobControl(), lambda message: None)
    cli("export", "--partition", "2", image, tmp_path / "cli.raw")
    assert (tmp_path / "gui.raw").read_bytes() == (tmp_path / "cli.raw").read_bytes() == raw.read_bytes()[10240 * 512 :]
    with pytest.raises(UsageError, match="p1, p2"):
        op.plan(sel, {**values, "volume": "p3", "out": str(tmp_path / "x.raw")})
    assert not (tmp_path / "x.raw").exists()
