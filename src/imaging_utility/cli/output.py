"""Rendering shared by the commands: sizes, JSON, the progress bar (off when stderr is not a TTY).

Every command module imports this one to build the parser, so rich is imported only on first use:
``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, cast

from ..errors import UsageError

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


stderr = cast("Console", _LazyConsole(stderr=True, highlight=False, soft_wrap=True))
stdout = cast("Console", _LazyConsole(highlight=False, soft_wrap=True))

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str, what: str = "size") -> int:
    """``"4G"``, ``"4GiB"``, ``"650M"``, ``"1.5T"``, ``"4096"`` → bytes.  K/M/G/T/P are powers of 1024
    (with or without ``iB``); ``kB``/``MB``/``GB``/``TB`` are powers of 1000."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K/M/G/T suffix, e.g. 4G")
    number, unit, suffix = m.groups()
    decimal = suffix.lower() == "b" and unit != ""
    value = float(number) * (1000 if decimal else 1024) ** _POWERS[unit.lower()]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"


def print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def warn(message: str) -> None:
    from rich.markup import escape  # a message may carry "[...]" (a name, a group list): never markup

    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True)


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
        self._progress.update(task, completed=ev.done, total=ev.total, output=ev.output_bytes)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{human_bytes(speed)}/s" if speed else "-- /s", style="cyan")

    class BytesColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            out = task.fields.get("output", 0)
            done = task.completed
            text = f"{human_bytes(done)} / {human_bytes(task.total or 0)}"
            if out:
                label = task.fields.get("output_label", "out")
                ratio = f" ({out / done * 100:.1f}%)" if done and label == "compressed" else ""
                text += f" → {label} {human_bytes(out)}{ratio}"
            return Text(text)

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), BytesColumn(),
        RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=cast(_LazyConsole, stderr).real(), transient=False,
    )
