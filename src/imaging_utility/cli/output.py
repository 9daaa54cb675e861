"""Rendering shared by the commands: sizes, JSON, the progress bar (off when stderr is not a TTY).

Every command module imports this one to build the parser, so rich is imported only on first use:
``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, cast

from ..limits import MAX_THREADS
from ..units import human_bytes, parse_size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from ..progress import ProgressEvent


class _LazyConsole:
    """A rich ``Console`` created on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return cast("Console", self._console)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


__all__ = ["ProgressBar", "human_bytes", "parse_size", "print_json", "stderr", "stdout", "thread_count", "warn"]

stderr = cast("Console", _LazyConsole(stderr=True, highlight=False, soft_wrap=True))
stdout = cast("Console", _LazyConsole(highlight=False, soft_wrap=True))

def thread_count(text: str) -> int:
    """``--threads N``: 1 to ``MAX_THREADS`` (a job then runs fewer when its chunks would not fit in memory)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of threads") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{n}: use 1 to {MAX_THREADS}")
    return n


def print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def shown(text: str) -> str:
    """``text`` safe for a terminal: control characters (C0, DEL, C1, so no escape sequence gets through)
    and undecodable bytes (surrogate escapes) as ``\\xNN``."""
    out = []
    for c in text:
        o = ord(c)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(c)
    return "".join(out)


def warn(message: str) -> None:
    """``warning: MESSAGE`` on stderr; the message is printed as text (escaped, never read as markup)."""
    from rich.text import Text

    stderr.print(Text.assemble(("warning:", "yellow"), " ", shown(message)))


def _short(n: float) -> tuple[str, str]:
    """(number, unit) with three significant digits: ("1.21", "GiB"), ("512", "MiB")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1000 or unit == "PiB":
            return (f"{n:.0f}" if unit == "B" or abs(n) >= 100 else f"{n:.3g}"), unit
        n /= 1024
    return f"{n:.3g}", "PiB"


def short_bytes(n: float) -> str:
    return " ".join(_short(n))


class ProgressBar:
    """Consumes ``ProgressEvent``s; a rich bar on a TTY, nothing otherwise."""

    def __init__(self, enabled: bool | None = None, output_label: str = "compressed") -> None:
        self.enabled = stderr.is_terminal if enabled is None else enabled
        self.output_label = output_label
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress = _progress()
            self._progress.start()
        return self

    def __call__(self, ev: ProgressEvent) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(ev.operation)
        if task is None:
            task = self._progress.add_task(ev.operation, total=ev.total, completed=ev.done,
                                           output_label=self.output_label)
            self._tasks[ev.operation] = task
        self._progress.update(task, completed=ev.done, total=ev.total, output=ev.output_bytes, event=ev)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _progress() -> Progress:
    """The bar: at most 80 columns (name 11, percent 4, bar 12, bytes 26, rate 9, ETA 12, and 5 spaces)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{short_bytes(speed)}/s" if speed else "-- /s", style="cyan")

    class BytesColumn(ProgressColumn):
        """``1.21/4.61 GiB → 789 MiB``: done of total, and what was written when that is a different amount."""

        def render(self, task: Task) -> Text:
            (a, ua), (b, ub) = _short(task.completed), _short(task.total or 0)
            text = f"{a}/{b} {ub}" if ua == ub else f"{a} {ua}/{b} {ub}"
            out = task.fields.get("output", 0)
            if out and task.fields.get("output_label") == "compressed":
                text += f" → {short_bytes(out)}"
            return Text(text)

    class EtaColumn(ProgressColumn):
        """The ETA, or ``paused`` while the job is held (the GUI's dashboard shows the other pipeline fields)."""

        def render(self, task: Task) -> Text:
            ev: ProgressEvent | None = task.fields.get("event")
            if ev is not None and ev.paused:
                return Text("paused", style="bold yellow")
            left = task.time_remaining
            if task.finished or left is None:
                return Text("")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"ETA {hours}:{minutes:02d}:{seconds:02d}", style="cyan")

    return Progress(
        TextColumn("{task.description}"), TaskProgressColumn(), BarColumn(bar_width=12), BytesColumn(),
        RateColumn(), EtaColumn(), console=cast(_LazyConsole, stderr).real(), transient=False,
    )
