"""Modal dialogs: a confirmation (yes/no or a typed word) and the choice of an operation."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from .job import Confirmation
from .operation import Operation


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True only when accepted (and, for a typed confirmation, the word typed exactly)."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: thick $error; background: $surface; padding: 0 1;
    }
    ConfirmScreen .title { text-style: bold; color: $error; }
    ConfirmScreen #lines { height: auto; }
    ConfirmScreen #typed { margin: 0 0 1 0; }
    ConfirmScreen Horizontal { height: 1; align: right middle; }
    ConfirmScreen Button { margin: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, confirmation: Confirmation) -> None:
        super().__init__()
        self.confirmation = confirmation

    def compose(self) -> ComposeResult:
        c = self.confirmation
        with Vertical():
            yield Label(c.title, classes="title")
            yield Static("\n".join(c.lines), id="lines", markup=False)
            if c.typed is not None:
                yield Label(f"Type '{c.typed}' to continue:")
                yield Input(placeholder=c.typed, id="typed", compact=True)
            with Horizontal():
                yield Button(c.accept, variant="error", id="accept", disabled=c.typed is not None, compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#typed" if self.confirmation.typed is not None else "#cancel").focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#accept", Button).disabled = not self._typed_ok()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._typed_ok():
            self.dismiss(True)

    def _typed_ok(self) -> bool:
        want = self.confirmation.typed
        return want is None or self.query_one("#typed", Input).value.strip().lower() == want

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "accept" and self._typed_ok())

    def action_cancel(self) -> None:
        self.dismiss(False)


class ChooseScreen(ModalScreen[Operation | None]):
    """Which operation to run on what was picked."""

    DEFAULT_CSS = """
    ChooseScreen { align: center middle; }
    ChooseScreen > Vertical {
        width: 70; max-width: 100%; height: auto; border: thick $accent; background: $surface; padding: 0 1;
    }
    ChooseScreen OptionList { height: auto; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Back")]

    def __init__(self, what: str, operations: list[Operation]) -> None:
        super().__init__()
        self.what = what
        self.operations = operations

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.what, markup=False)
            yield OptionList(*(Option(op.title, id=op.key) for op in self.operations))

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.operations[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
