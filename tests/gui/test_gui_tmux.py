"""The GUI in a real terminal: tmux runs ``imaging-utility gui DEVICE``, keys go in with send-keys, the
screen comes back with capture-pane.  Image a loop device end to end; the image equals the CLI's."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import cli, need_tools
from gui.guihelpers import image_digests
from imagetools import data_frames, mixed_bytes


class Tmux:
    """A private tmux server (its own socket), so nothing else's sessions are touched."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "gui")

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the terminal after {timeout} s:\n{screen}")
            time.sleep(0.2)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "gui", *keys)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False, capture_output=True)


def test_image_a_device_in_a_real_terminal(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    need_tools("tmux")
    (tmp_path / "src.raw").write_bytes(mixed_bytes(8 << 20, seed=31))
    dev = loopdev(tmp_path / "src.raw")
    ref = tmp_path / "cli.img"
    cli("image", dev, ref)
    dest = tmp_path / f"{os.path.basename(dev)}.img.zst"  # the form's default: NAME.img.zst here
    status = tmp_path / "status"
    env = f"PYTHONPATH={shlex.quote(os.pathsep.join(sys.path))}"
    command = (f"cd {shlex.quote(str(tmp_path))} && {env} {shlex.quote(sys.executable)} -m imaging_utility gui "
               f"--log-file gui.log {dev}; echo $? > {shlex.quote(str(status))}")
    tmux = Tmux(f"iu-gui-{os.getpid()}")
    try:
        tmux.run("new-session", "-d", "-s", "gui", "-x", "100", "-y", "30", command)
        screen = tmux.wait_for("^s Start")
        assert "Image file" in screen and f"$ imaging-utility image {dev}" in screen and dest.name in screen, screen
        tmux.keys("C-s")
        screen = tmux.wait_for("DONE", timeout=120)
        assert "blake3" in screen and "Throughput" in screen and "Bottleneck" in screen
        tmux.keys("q")
        deadline = time.monotonic() + 30
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline, f"gui did not exit:\n{tmux.screen()}"
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
    finally:
        tmux.kill()
    assert data_frames(dest) == data_frames(ref)
    assert image_digests(str(dest)) == image_digests(str(ref))
    assert f"imaging-utility image {dev} {dest}" in (tmp_path / "gui.log").read_text()


def test_gui_without_a_terminal_says_so() -> None:
    proc = cli("gui", check=2)
    assert proc.stderr.count("\n") == 1 and "needs an interactive terminal" in proc.stderr, proc.stderr
