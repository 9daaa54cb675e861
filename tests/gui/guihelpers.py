"""Helpers for the GUI tests: the screen as text, waiting for a condition, fixed inventories."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as plain text (the same render the SVG screenshots use)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


async def wait_for(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def image_digests(path: str) -> dict[str, str]:
    from imaging_utility.image.reader import open_image

    with open_image(path) as reader:
        assert reader.trailer is not None
        return dict(reader.trailer.meta["digests"])


def block_reads(dev: str) -> tuple[int, int]:
    """(read requests completed, sectors read) of a block device, from /sys/block/NAME/stat."""
    fields = Path(f"/sys/block/{os.path.basename(os.path.realpath(dev))}/stat").read_text().split()
    return int(fields[0]), int(fields[2])


def block_idle(dev: str) -> bool:
    """No request of the device in flight (readahead submitted before a pause has completed)."""
    name = os.path.basename(os.path.realpath(dev))
    return Path(f"/sys/block/{name}/inflight").read_text().split() == ["0", "0"]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fixed_volumes() -> list[Any]:
    """A made-up machine for the snapshots: the same rows on every run."""
    from imaging_utility.ops.inventory import Volume

    gib = 1 << 30
    sda = Volume("sda", "/dev/sda", 500 * gib, model="ATA Samsung SSD 870", serial="S5Y1NX0R123456",
                 transport="sata", mounts=("rw /",), read_write=True)
    sda.partitions = [
        Volume("sda1", "/dev/sda1", 512 << 20, number=1, fs="fat32", label="EFI", used=34 << 20,
               mounts=("rw /boot/efi",), read_write=True),
        Volume("sda2", "/dev/sda2", 499 * gib, number=2, fs="ext4", label="root", used=212 * gib,
               mounts=("rw /",), read_write=True),
    ]
    sdb = Volume("sdb", "/dev/sdb", 2000 * gib, model="WDC WD20EZRZ-00Z", serial="WD-WCC4M1234567",
                 transport="usb")
    sdb.partitions = [
        Volume("sdb1", "/dev/sdb1", 1000 * gib, number=1, fs="ntfs", label="Windows", used=420 * gib),
        Volume("sdb2", "/dev/sdb2", 1000 * gib, number=2, fs="exfat", label="Media", used=37 * gib,
               mounts=("ro /mnt/media",)),
    ]
    loop = Volume("loop3", "/dev/loop3", 64 << 20, transport="loop")
    loop.partitions = [Volume("loop3 #1", "/dev/loop3", 63 << 20, offset=1 << 20, number=1, fs="ext4",
                              label="data", used=5 << 20,
                              note="no /dev node: imaged as --offset 1048576 --length 66060288 of /dev/loop3")]
    return [loop, sda, sdb]
