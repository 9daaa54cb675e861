"""Snapshots of the picker, the dashboard mid-job and the restore confirmation at 80×24 and 120×40,
from a fixed device list and frozen numbers; at 80×24 every label and value is on screen, none cut off."""

from __future__ import annotations

from typing import Any

import pytest

from gui.guihelpers import fixed_volumes, screen_text
from imaging_utility.gui.app import ImagingApp
from imaging_utility.gui.dialogs import ConfirmScreen
from imaging_utility.gui.form import FormScreen
from imaging_utility.gui.job import Confirmation, Plan
from imaging_utility.gui.op_restore import RestoreOperation
from imaging_utility.gui.operation import ImageFile
from imaging_utility.progress import ProgressEvent

SIZES = [(80, 24), (120, 40)]
NOW = 10_000.0
MiB, GiB = 1 << 20, 1 << 30


def app() -> ImagingApp:
    return ImagingApp(volumes=fixed_volumes, probe_volume=None, clock=lambda: NOW)


def visible(pilot: Any, *needles: str) -> None:
    """Every needle is on screen whole; a long one may wrap, then each of its words is."""
    text = screen_text(pilot.app)
    words = set(text.split())
    missing = [n for n in needles if n not in text and not all(w in words for w in n.split())]
    assert not missing, f"not on screen: {missing}\n{text}"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_picker(snap_compare: Any, size: tuple[int, int]) -> None:
    async def before(pilot: Any) -> None:
        await pilot.pause(0.2)
        await pilot.press("down")  # the node-less partition: its details line
        await pilot.pause(0.1)
        visible(pilot, "DEVICE", "SIZE", "FS", "LABEL", "USED", "MOUNTED", "loop3 #1", "sda2", "sdb2",
                "Windows", "rw /boot/efi", "ro /mnt/media", "420.00 GiB", "1.95 TiB",
                "/dev/loop3 at offset 1048576", "no /dev node", "Open image/set:", "Quit", "Log file")

    assert snap_compare(app(), terminal_size=size, run_before=before)


def frozen_event() -> ProgressEvent:
    return ProgressEvent(
        "image", done=1536 * MiB, total=4 * GiB, output_bytes=412 * MiB, read_bytes=1544 * MiB,
        started=NOW - 95, chunk_size=MiB, workers=1.8, max_workers=2, depth=6, max_depth=8,
        bottleneck="compression", paused_seconds=12.0, start_done=0, zero_bytes=300 * MiB,
        unallocated_bytes=0, bad_bytes=4096, bad_sectors=8, rate_limit=80 * MiB, rate_limit_mode="adaptive")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard_mid_job(snap_compare: Any, size: tuple[int, int]) -> None:
    plan = Plan("image /dev/sdb → /srv/images/sdb.img.zst",
                "imaging-utility image --adaptive-rate-limit /dev/sdb /srv/images/sdb.img.zst",
                lambda progress, control, warn: [], output_label="compressed")

    async def before(pilot: Any) -> None:
        a: ImagingApp = pilot.app
        dash = a.start(plan, autostart=False)
        await pilot.pause(0.1)
        dash.state = "running"
        job = dash.job
        active = 0.0
        done = 0
        for step in range(60):  # two minutes of history, 1.5 s apart, throughput wandering 60..110 MiB/s
            active += 1.5
            done += int((85 + 25 * ((step * 7) % 11 - 5) / 5) * MiB * 1.5)
            job.history.add(active, done)
        job.latest = frozen_event()
        warning = ("warning: source /dev/sdb: partition sdb2 is mounted read-only at /mnt/media (exfat); "
                   "imaging it is safe")
        for line in (warning, "pausing: finishing the chunks in flight", "resumed"):
            dash.log_line(line)
        dash.refresh_stats()
        await pilot.pause(0.1)
        visible(pilot, "RUNNING", "image /dev/sdb", "Throughput", "(10 s avg)", "Elapsed", "0:01:35",
                "(0:00:12 paused)", "ETA", "1.50 GiB of 4.00 GiB", "Read", "1.51 GiB", "Compressed",
                "412.00 MiB (26.8% of raw)", "Workers", "1.8 of 2", "Pipeline", "depth 6/8, chunk 1.00 MiB",
                "Skipped", "300.00 MiB zero, 0 B unused", "Bad sectors", "8 (4.00 KiB)", "Bottleneck",
                "compression", "Rate limit", "adaptive 80.00 MiB/s", "--adaptive-rate-limit",
                warning, "resumed", "Pause/Resume", "Cancel")

    assert snap_compare(app(), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_restore_confirmation(snap_compare: Any, size: tuple[int, int]) -> None:
    image = ImageFile("/srv/images/sdb.img.zst", 2000 * GiB)
    lines = ["/dev/sdc: 2.73 TiB block device (WDC WD30EZRZ-00Z, serial WD-WCC4M7654321, usb)",
             "  sdc1: 2.73 TiB, ntfs 'Backup'",
             "Every byte of the first 1.95 TiB of /dev/sdc is overwritten.",
             "This overwrites /dev/sdc with 1.95 TiB from /srv/images/sdb.img.zst."]

    async def before(pilot: Any) -> None:
        a: ImagingApp = pilot.app
        a.open_form(RestoreOperation(), image)
        while not (isinstance(a.screen, FormScreen) and a.screen.ready):
            await pilot.pause(0.05)
        a.screen.set_values({"target": "/dev/sdc", "verify": True})
        a.push_screen(ConfirmScreen(Confirmation("Overwrite /dev/sdc?", lines, typed="sdc", accept="Restore")))
        await pilot.pause(0.1)
        await pilot.press("s", "d")
        await pilot.pause(0.1)
        visible(pilot, "Overwrite /dev/sdc?", *lines, "Type 'sdc' to continue:", "Restore", "Cancel")

    assert snap_compare(app(), terminal_size=size, run_before=before)
