"""The first screen: the machine's disks and partitions, or an image file or backup set to open."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from ..errors import Error, NotFoundError
from ..image.reader import open_image
from ..ops.inventory import Volume
from ..units import human_bytes
from .operation import BackupSet, ImageFile, Selection

MANIFEST = "backup.manifest.json"
COLUMNS = ("DEVICE", "SIZE", "FS", "LABEL", "USED", "MOUNTED")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(vol: Volume) -> tuple[Text, ...]:
    name = vol.name if vol.is_disk else f" └ {vol.name}"
    if vol.read_write:
        mounted = Text(_cut(vol.mounts[0] if vol.mounts else "in use", 14), style="bold red")
    elif vol.mounted:
        mounted = Text(_cut(vol.mounts[0], 14), style="yellow")
    else:
        mounted = Text("-", style="dim")
    return (Text(_cut(name, 16)), Text(human_bytes(vol.size), justify="right"), Text(vol.fs or "-"),
            Text(_cut(vol.label or "-", 12)), Text(human_bytes(vol.used) if vol.used is not None else "-",
                                                   justify="right"), mounted)


def open_selection(path: str) -> Selection:
    """An image file or a backup set from a path the user typed; ``Error`` says why not."""
    path = os.path.expanduser(path.strip())
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, MANIFEST)):
            raise NotFoundError(f"{path} is a directory without {MANIFEST}: not a backup set")
        return BackupSet(path, (f"backup set {path}",))
    with open_image(path) as reader:
        meta = reader.header.meta
        source = meta.get("source") or {}
        lines = (f"image {path}: {human_bytes(reader.size)} in {reader.chunk_count} chunks",
                 f"made {meta.get('created', '?')} from {source.get('path', '?')} on {meta.get('hostname', '?')}")
        return ImageFile(path, reader.size, lines)


class PickerScreen(Screen[None]):
    """Pick a disk or partition (Enter), or type the path of an image or backup set."""

    DEFAULT_CSS = """
    PickerScreen #title { text-style: bold; padding: 0 1; }
    PickerScreen DataTable { height: 1fr; }
    PickerScreen #details { height: 3; padding: 0 1; color: $text-muted; }
    PickerScreen #open { height: 1; padding: 0 1; }
    PickerScreen #open Label { padding: 0 1 0 0; }
    PickerScreen #open Input { width: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "refresh", "Refresh"), Binding("o", "open", "Open image"),
                Binding("enter", "choose", "Choose", show=True)]

    class Picked(Message):
        def __init__(self, selection: Selection) -> None:
            super().__init__()
            self.selection = selection

    def __init__(self, volumes: Callable[[], list[Volume]], probe: Callable[[Volume], Volume] | None, *,
                 defer_probe: bool = False) -> None:
        """``defer_probe``: the app opens straight onto something else (``gui PATH``), so reading every
        filesystem waits until the user comes back to this screen."""
        super().__init__()
        self._defer_probe = defer_probe
        self._list = volumes
        self._probe = probe
        self.volumes: list[Volume] = []
        self._rows: dict[str, Volume] = {}
        self._probed_upto = 0
        self._generation = 0

    def compose(self) -> ComposeResult:
        yield Static("Pick a source disk or partition, or open an image or backup set", id="title")
        table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="details", markup=False)
        with Horizontal(id="open"):
            yield Label("Open image/set:")
            yield Input(placeholder="path of an image file or a backup set directory", id="open-path",
                        compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.query_one(DataTable).focus()

    def action_refresh(self) -> None:
        self.volumes = self._list()
        self._probed_upto = 0
        self._generation += 1
        self._fill()
        self._probe_rest()

    def on_screen_resume(self) -> None:
        self._probe_rest()

    def on_screen_suspend(self) -> None:
        self._defer_probe = False  # when we are shown again, probe

    def probe_now(self) -> None:
        self._defer_probe = False
        self._probe_rest()

    def _probe_rest(self) -> None:
        if self._probe is not None and not self._defer_probe and self._probed_upto < len(self.volumes):
            self.run_worker(self._probe_all, thread=True, exclusive=True, group="probe", exit_on_error=False)

    def _probe_all(self) -> None:
        """Fill in filesystems, labels and used space while this screen is shown: reading allocation
        bitmaps must not compete with a job the user started meanwhile."""
        assert self._probe is not None
        volumes, generation = list(self.volumes), self._generation
        for i in range(self._probed_upto, len(volumes)):
            if self.app.screen is not self or generation != self._generation:
                return  # resumed by on_screen_resume, or a refresh started over
            volumes[i] = self._probe(volumes[i])
            self.app.call_from_thread(self._probed, list(volumes), i + 1, generation)

    def _probed(self, volumes: list[Volume], upto: int, generation: int) -> None:
        if generation != self._generation:
            return
        self.volumes = volumes
        self._probed_upto = upto
        self._fill()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        self._rows.clear()
        for disk in self.volumes:
            for vol in (disk, *disk.partitions):
                key = f"{vol.path}@{vol.offset}"
                self._rows[key] = vol
                table.add_row(*_row(vol), key=key)
        if self._rows:
            table.move_cursor(row=min(keep, len(self._rows) - 1))
        else:
            self._details("No block devices found (run as root to see them all); open an image below.")

    def highlighted(self) -> Volume | None:
        table = self.query_one(DataTable)
        if not self._rows:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._rows.get(key or "")

    def show_error(self, text: str) -> None:
        self._details(f"✗ {text}")

    def _details(self, text: str) -> None:
        self.query_one("#details", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        vol = self.highlighted()
        if vol is None:
            return
        facts = [f"{vol.path}" + (f" at offset {vol.offset}" if vol.windowed else ""), human_bytes(vol.size)]
        facts += [x for x in (vol.model, f"serial {vol.serial}" if vol.serial else None, vol.transport) if x]
        lines = [", ".join(facts)]
        if vol.mounts:
            lines.append("mounted " + "; ".join(vol.mounts)
                         + (" (read-write: imaging it asks first)" if vol.read_write else ""))
        if vol.note:
            lines.append(vol.note)
        self._details("\n".join(lines))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_choose()

    def action_choose(self) -> None:
        vol = self.highlighted()
        if vol is not None:
            self.post_message(self.Picked(vol))

    def action_open(self) -> None:
        self.query_one("#open-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            sel = open_selection(event.value)
        except Error as e:
            self._details(f"✗ {e}")
            return
        self.post_message(self.Picked(sel))
