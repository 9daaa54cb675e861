"""An operation's form: its fields, the equivalent command line as you type, and Start."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static

from ..errors import Error
from .dialogs import ConfirmScreen
from .job import Plan
from .operation import Field, Operation, Selection, Values, describe


class FormScreen(Screen[Plan | None]):
    """Dismisses with the validated, confirmed plan (Start) or None (Back); a declined
    confirmation comes back here."""

    DEFAULT_CSS = """
    FormScreen #what { text-style: bold; padding: 0 1; }
    FormScreen VerticalScroll { height: 1fr; }
    FormScreen .row { height: 1; padding: 0 1; margin-bottom: 1; }
    FormScreen .row > Label { width: 15; }
    FormScreen .row > Input { width: 1fr; }
    FormScreen .row > Select { width: 1fr; }
    FormScreen Checkbox { margin: 0 1 1 1; }
    FormScreen #command { color: $success; padding: 0 1; height: auto; max-height: 4; }
    FormScreen #error { color: $error; padding: 0 1; height: auto; max-height: 3; }
    FormScreen #buttons { height: 1; padding: 0 1; }
    FormScreen #buttons Button { margin-right: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back"), Binding("ctrl+s", "start", "Start")]

    def __init__(self, operation: Operation, selection: Selection) -> None:
        super().__init__()
        self.operation = operation
        self.selection = selection
        self.fields = operation.fields(selection)
        self.ready = False  # composed and mounted: ``set_values`` may run

    def compose(self) -> ComposeResult:
        yield Static(f"{self.operation.title}\n{describe(self.selection)}", id="what", markup=False)
        with VerticalScroll():
            for f in self.fields:
                yield from self._field(f)
        yield Static("", id="command", markup=False)
        yield Static("", id="error", markup=False)
        with Horizontal(id="buttons"):
            yield Button("Start", variant="primary", id="start", compact=True)
            yield Button("Back", id="back", compact=True)
        yield Footer()

    def _field(self, f: Field) -> ComposeResult:
        if isinstance(f.default, bool):
            yield Checkbox(f.label, f.default, id=f"f-{f.name}", compact=True)
            return
        widget: Widget
        if f.choices:
            widget = Select([(label, value) for value, label in f.choices], value=f.default, allow_blank=False,
                            id=f"f-{f.name}", compact=True)
        else:
            suggester = SuggestFromList(f.suggestions) if f.suggestions else None
            widget = Input(f.default, placeholder=f.help, id=f"f-{f.name}", suggester=suggester, compact=True)
        yield Horizontal(Label(f.label), widget, classes="row")

    def on_mount(self) -> None:
        self._update()
        self.ready = True

    def values(self) -> Values:
        out: Values = {}
        for f in self.fields:
            w = self.query_one(f"#f-{f.name}")
            if isinstance(w, Checkbox):
                out[f.name] = w.value
            elif isinstance(w, Select):
                out[f.name] = str(w.value)
            elif isinstance(w, Input):
                out[f.name] = w.value
        return out

    def set_values(self, values: Values) -> None:
        """Fill fields programmatically (tests, presets)."""
        for name, value in values.items():
            w = self.query_one(f"#f-{name}")
            if isinstance(w, Checkbox | Input | Select):
                w.value = value
        self._update()

    def _update(self) -> bool:
        command = self.query_one("#command", Static)
        error = self.query_one("#error", Static)
        try:
            command.update("$ " + self.operation.command(self.selection, self.values()))
            error.update("")
            return True
        except Error as e:
            error.update(f"✗ {e}")
            return False

    def on_input_changed(self, event: Input.Changed) -> None:
        self._update()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._update()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._update()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        else:
            self.action_back()

    def action_start(self) -> None:
        if not self._update():
            return
        try:
            plan = self.operation.plan(self.selection, self.values())
        except Error as e:
            self.query_one("#error", Static).update(f"✗ {e}")
            return
        if plan.confirmation is None:
            self.dismiss(plan)
            return

        def answered(ok: bool | None) -> None:
            if ok:
                plan.confirmed = True
                self.dismiss(plan)

        self.app.push_screen(ConfirmScreen(plan.confirmation), callback=answered)

    def action_back(self) -> None:
        self.dismiss(None)
