"""The terminal GUI (Textual): pick a source, choose an operation, fill its form, watch the job live.

Screens: ``PickerScreen`` (disks, partitions, or an image/backup set to open) →
``ChooseScreen`` (operations that apply) → ``FormScreen`` (the operation's
options, the equivalent command line) → a ``ConfirmScreen`` where the command
would ask → ``DashboardScreen`` (live numbers, pause/resume/cancel, a log).
Quitting while a job runs asks first, then cancels it cleanly (the partial
image is kept for ``--resume``); SIGTERM does the same without asking (exit 130).
``l`` toggles a log file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from ..errors import EXIT_INTERRUPTED, Error, NotFoundError
from ..ops.inventory import Volume, list_volumes, probe
from .dashboard import DashboardScreen, JobFinished
from .dialogs import ChooseScreen, ConfirmScreen
from .form import FormScreen
from .job import Confirmation, Job, Plan
from .operation import Operation, Selection, describe
from .operations import default_operations
from .picker import PickerScreen, open_selection

DEFAULT_LOG_FILE = "imaging-utility-gui.log"
package_log = logging.getLogger("imaging_utility")


class ImagingApp(App[int]):
    TITLE = "imaging-utility"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("l", "toggle_log_file", "Log file"),
    ]

    def __init__(self, *, volumes: Callable[[], list[Volume]] = list_volumes,
                 probe_volume: Callable[[Volume], Volume] | None = probe,
                 operations: list[Operation] | None = None, log_file: str | None = None,
                 initial: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._volumes = volumes
        self._probe = probe_volume
        self._operations = operations
        self.log_file = os.path.abspath(log_file or DEFAULT_LOG_FILE)
        self.clock = clock
        self.initial = initial
        self.dashboard: DashboardScreen | None = None
        self._exit_code_when_done: int | None = None

    def on_mount(self) -> None:
        # SIGTERM (a shutdown, a kill) ends a job the way quitting does: cleanly, the image resumable.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop_and_exit, EXIT_INTERRUPTED)
        self.picker = PickerScreen(self._volumes, self._probe, defer_probe=bool(self.initial))
        self.push_screen(self.picker)
        if self.initial:
            self.call_after_refresh(self._open_initial, self.initial)

    def _open_initial(self, path: str) -> None:
        try:
            sel = self.selection_for(path)
        except Error as e:
            self.picker.show_error(str(e))
            self.picker.probe_now()
            return
        if isinstance(sel, Volume):  # ``gui DEVICE``: straight to the image form (the picker offers the rest)
            self.open_form(next(op for op in self.operations() if op.accepts(sel)), sel)
            return
        self.choose(sel)

    def selection_for(self, path: str) -> Selection:
        """The disk or partition ``path`` names, else the image or backup set at ``path``."""
        if os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode):
            real = os.path.realpath(path)
            for disk in self._volumes():
                for vol in (disk, *disk.partitions):
                    if os.path.realpath(vol.path) == real and not vol.windowed:
                        return self._probe(vol) if self._probe is not None else vol
            raise NotFoundError(f"{path} is not among the block devices sysfs lists")
        return open_selection(path)

    def operations(self) -> list[Operation]:
        if self._operations is None:
            disks = tuple(v.path for v in self._volumes() if not v.mounted)
            self._operations = default_operations(disks)
        return self._operations

    # --- picking and planning ----------------------------------------------------------------------
    def on_picker_screen_picked(self, message: PickerScreen.Picked) -> None:
        self.choose(message.selection)

    def choose(self, sel: Selection) -> None:
        ops = [op for op in self.operations() if op.accepts(sel)]
        if len(ops) == 1:
            self.open_form(ops[0], sel)
        elif ops:
            self.push_screen(ChooseScreen(describe(sel), ops),
                             callback=lambda op: self.open_form(op, sel) if op is not None else None)

    def open_form(self, op: Operation, sel: Selection) -> None:
        self.push_screen(FormScreen(op, sel), callback=self._planned)

    def _planned(self, plan: Plan | None) -> None:
        if plan is not None:
            self.start(plan)

    def start(self, plan: Plan, *, autostart: bool = True) -> DashboardScreen:
        self.dashboard = DashboardScreen(Job(plan), clock=self.clock, autostart=autostart)
        self.push_screen(self.dashboard)
        return self.dashboard

    # --- quitting ----------------------------------------------------------------------------------
    def job_running(self) -> bool:
        return self.dashboard is not None and self.dashboard.running

    async def action_quit(self) -> None:
        if not self.job_running():
            self.exit(0)
            return
        assert self.dashboard is not None
        plan = self.dashboard.job.plan
        lines = [f"{plan.title} is still running.", "Quitting cancels it cleanly after the chunks in flight."]
        if plan.resume_command:
            lines += ["The partial image is kept; continue it later with:", plan.resume_command]
        if isinstance(self.screen, ConfirmScreen):
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self.stop_and_exit(0)

        self.push_screen(ConfirmScreen(Confirmation("Quit while a job runs?", lines, accept="Cancel job and quit")),
                         callback=answered)

    def stop_and_exit(self, code: int) -> None:
        """Cancel a running job (it stops after the chunks in flight, the image kept) and exit with ``code``."""
        if self.dashboard is not None and self.dashboard.running:
            self._exit_code_when_done = code
            self.dashboard.action_cancel()
        else:
            self.exit(code)

    def on_job_finished(self, message: JobFinished) -> None:
        if self._exit_code_when_done is not None:
            self.exit(self._exit_code_when_done)

    def on_unmount(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    # --- log file ----------------------------------------------------------------------------------
    def _file_handler(self) -> logging.FileHandler | None:
        for h in package_log.handlers:
            if isinstance(h, logging.FileHandler) and h.baseFilename == self.log_file:
                return h
        return None

    @property
    def logging_to_file(self) -> bool:
        return self._file_handler() is not None

    def action_toggle_log_file(self) -> None:
        handler = self._file_handler()
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()
            self.notify(f"no longer logging to {self.log_file}")
            return
        try:
            handler = logging.FileHandler(self.log_file)
        except OSError as e:
            self.notify(f"cannot log to {self.log_file}: {e.strerror}", severity="error")
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_log.addHandler(handler)
        if package_log.level == logging.NOTSET or package_log.level > logging.INFO:
            package_log.setLevel(logging.INFO)
        self.notify(f"logging to {self.log_file}")
