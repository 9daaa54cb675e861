"""The live dashboard of a running job: progress, throughput, pipeline, pacing, a log; pause, resume, cancel.

Everything shown comes from the engine's ``ProgressEvent``s (the same ones the
CLI bar shows), read from the job twice a second: the screen never slows the
engine down, and the engine never waits for the screen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, RichLog, Sparkline, Static
from textual.worker import Worker, WorkerState

from ..errors import Error, Interrupted
from ..progress import ProgressEvent
from ..units import human_bytes
from .job import Job

log = logging.getLogger("imaging_utility.gui")

STATE_STYLE = {"ready": "dim", "running": "bold green", "paused": "bold yellow", "pausing": "yellow",
               "cancelling": "yellow", "done": "bold green", "failed": "bold red", "cancelled": "bold yellow"}


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rate(bps: float) -> str:
    return f"{human_bytes(bps)}/s" if bps > 0 else "--"


def stats_text(ev: ProgressEvent | None, average: float, now: float, output_label: str) -> Text:
    """The numbers, two label/value pairs a line (fits 80 columns).  Plain text, not a table: it is
    redrawn every second and must cost the engine nothing."""
    if ev is None:
        return Text("starting…")
    elapsed = now - ev.started
    remaining = (ev.total - ev.done) / average if average > 0 and ev.total > ev.done else 0.0
    paused = f" ({duration(ev.paused_seconds)} paused)" if ev.paused_seconds >= 1 else ""
    ratio = f" ({ev.output_bytes / ev.done * 100:.1f}% of raw)" if ev.done and output_label == "compressed" else ""
    pipeline = f"depth {ev.depth}/{ev.max_depth}" if ev.max_depth else "-"
    if ev.chunk_size:
        pipeline += f", chunk {human_bytes(ev.chunk_size)}"
    limit = "none"
    if ev.rate_limit_mode:
        limit = f"{ev.rate_limit_mode} " + (rate(ev.rate_limit) if ev.rate_limit else "(not limiting)")
    eta = duration(remaining) if remaining else ("--" if ev.done < ev.total else "0:00:00")
    bad = f"{ev.bad_sectors}" + (f" ({human_bytes(ev.bad_bytes)})" if ev.bad_bytes else "")
    rows = [
        ("Throughput", f"{rate(average)} (10 s avg)", "Elapsed", duration(elapsed) + paused),
        ("Done", f"{human_bytes(ev.done)} of {human_bytes(ev.total)}", "ETA", eta),
        ("Read", human_bytes(ev.read_bytes), output_label.capitalize() or "Written",
         human_bytes(ev.output_bytes) + ratio),
        ("Workers", f"{ev.workers:.1f} of {ev.max_workers}" if ev.max_workers else "-", "Pipeline", pipeline),
        ("Skipped", f"{human_bytes(ev.zero_bytes)} zero, {human_bytes(ev.unallocated_bytes)} unused",
         "Bad sectors", bad),
        ("Bottleneck", ev.bottleneck or "-", "Rate limit", limit),
    ]
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (k1, v1, k2, v2) in enumerate(rows):
        if i:
            text.append("\n")
        text.append(f"{k1:<11} ", "bold")
        text.append(f"{v1:<26} ")
        text.append(f"{k2:<11} ", "bold")
        text.append(v2)
    return text


class DashboardScreen(Screen[None]):
    DEFAULT_CSS = """
    DashboardScreen #title { height: 1; padding: 0 1; text-style: bold; }
    DashboardScreen ProgressBar { padding: 0 1; height: 1; }
    DashboardScreen #stats { height: 6; padding: 0 1; }
    DashboardScreen Sparkline { height: 2; margin: 0 1; }
    DashboardScreen #command { height: auto; max-height: 3; padding: 0 1; color: $success; }
    DashboardScreen RichLog {
        height: 1fr; min-height: 3; border-top: solid $primary; padding: 0 1; overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("p", "pause", "Pause/Resume"), Binding("c", "cancel", "Cancel"),
                Binding("escape", "back", "Back")]

    def __init__(self, job: Job, *, clock: Callable[[], float] = time.monotonic, autostart: bool = True,
                 refresh_every: float = 1.0) -> None:
        super().__init__()
        self.job = job
        self.clock = clock
        self.autostart = autostart
        self.refresh_every = refresh_every
        self.state = "ready"
        self.error: str | None = None
        self.lines: list[str] = []
        self._buckets_shown = -1
        self._title_state = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield ProgressBar(total=100, show_eta=False, id="bar")
        yield Static("", id="stats")
        yield Sparkline([], id="spark", summary_function=max)
        yield Static(f"$ {self.job.plan.command}", id="command", markup=False)
        yield RichLog(id="log", max_lines=2000, wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        log.info("%s", self.job.plan.command)
        if self.autostart:
            self.start()
        self.refresh_stats()
        self.set_interval(self.refresh_every, self.refresh_stats)

    def start(self) -> None:
        self.state = "running"
        self.run_worker(lambda: self.job.run(self._warn_from_thread), thread=True, exit_on_error=False,
                        name="job")

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "pausing", "cancelling")

    def log_line(self, text: str, level: int = logging.INFO) -> None:
        self.query_one(RichLog).write(text)
        log.log(level, text)

    def _warn_from_thread(self, text: str) -> None:
        self.app.call_from_thread(self.log_line, f"warning: {text}", logging.WARNING)

    def refresh_stats(self) -> None:
        job = self.job
        ev = job.snapshot()
        if ev is not None and self.running and self.state != "cancelling":
            if ev.paused:
                self.state = "paused"
            elif job.control.pause_requested:
                self.state = "pausing"
            else:
                self.state = "running"
        if self.state != self._title_state:
            self._title_state = self.state
            title = Text.assemble((self.state.upper(), STATE_STYLE.get(self.state, "")), "  ", job.plan.title)
            self.query_one("#title", Static).update(title, layout=False)
        if ev is not None:
            bar = self.query_one(ProgressBar)
            bar.update(total=max(ev.total, 1), progress=ev.done)
        now = self.clock() if job.finished is None else job.finished
        stats = stats_text(ev, job.history.average, now, job.plan.output_label)
        self.query_one("#stats", Static).update(stats, layout=False)
        if job.history.added != self._buckets_shown:
            self._buckets_shown = job.history.added
            self.query_one(Sparkline).data = list(job.history.buckets)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "job":
            return
        if event.state == WorkerState.SUCCESS:
            self.state = "done"
            self.lines = list(event.worker.result or [])
            for line in self.lines:
                self.log_line(line)
            self.log_line("done")
        elif event.state == WorkerState.ERROR:
            err = event.worker.error
            if isinstance(err, Interrupted):
                self.state = "cancelled"
                self.log_line(str(err), logging.WARNING)
                if self.job.plan.resume_command:
                    self.log_line(f"resume with: {self.job.plan.resume_command}", logging.WARNING)
            elif isinstance(err, Error):
                self.state = "failed"
                self.error = str(err)
                self.log_line(f"error: {err}", logging.ERROR)
            else:
                self.state = "failed"
                self.error = f"internal error: {type(err).__name__}: {err}"
                log.error("internal error", exc_info=err)
                self.query_one(RichLog).write(self.error)
        else:
            return
        self.refresh_stats()
        self.app.post_message(JobFinished(self))

    def action_pause(self) -> None:
        if not self.running or self.state == "cancelling":
            return
        control = self.job.control
        if control.pause_requested:
            control.resume()
            self.log_line("resumed")
        else:
            control.pause()
            self.log_line("pausing: finishing the chunks in flight")
        self.refresh_stats()

    def action_cancel(self) -> None:
        if not self.running:
            return
        self.state = "cancelling"
        self.job.control.cancel()
        self.log_line("cancelling: finishing the chunks in flight")
        self.refresh_stats()

    def action_back(self) -> None:
        if self.running:
            self.notify("A job is running: pause (p) or cancel (c) it first")
            return
        self.dismiss(None)


class JobFinished(Message):
    def __init__(self, dashboard: DashboardScreen) -> None:
        super().__init__()
        self.dashboard = dashboard
