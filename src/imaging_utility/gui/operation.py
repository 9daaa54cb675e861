"""What an operation is to the GUI: a form (a list of ``Field``s) and a plan built from its values.

An operation is small and pluggable: it says which selections it applies to
(a disk or partition, an image file, a backup set), which fields its form has
(with the command line's defaults), how the values become the equivalent command
line (shown live as the user types) and a ``Plan`` whose ``run`` calls the ops
layer with a progress callback and a ``JobControl``.  Validation errors are the
ops layer's own ``UsageError``/``RefusedError`` messages, so the GUI refuses what
the CLI refuses, in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import Error, UsageError
from ..ops.inventory import Volume
from ..ops.manifest import load_manifest
from ..units import human_bytes
from .job import Plan

Values = dict[str, str | bool]


@dataclass(frozen=True)
class ImageFile:
    """An image (single file or the first part of a split one) the user opened."""

    path: str
    size: int
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupSet:
    """A ``backup-disk`` set directory (``backup.manifest.json`` inside)."""

    path: str
    lines: tuple[str, ...] = ()


Selection = Volume | ImageFile | BackupSet


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    default: str | bool = ""
    choices: tuple[tuple[str, str], ...] = ()  # (value, label): a choice; else text or, for a bool default, a box
    help: str = ""
    suggestions: tuple[str, ...] = ()


def set_disk_fields(sel: Selection) -> list[Field]:
    """The "disk of the set" field a backup set needs (none for anything else)."""
    if not isinstance(sel, BackupSet):
        return []
    try:
        names = [d["name"] for d in load_manifest(sel.path)["disks"]]
    except Error:
        names = []  # the plan says what is wrong with the manifest
    return [Field("disk", "Disk of the set", names[0] if names else "", help=", ".join(names))]


class Operation(Protocol):
    key: str
    title: str

    def accepts(self, sel: Selection) -> bool: ...

    def fields(self, sel: Selection) -> list[Field]: ...

    def command(self, sel: Selection, values: Values) -> str:
        """The equivalent command line; ``UsageError`` when a value is invalid.  No I/O."""
        ...

    def plan(self, sel: Selection, values: Values) -> Plan:
        """The job, after every check the command would make before it starts (may read devices)."""
        ...


def describe(sel: Selection) -> str:
    """One line naming what was picked."""
    if isinstance(sel, Volume):
        what = "disk" if sel.is_disk else "partition"
        fs = f", {sel.fs}" + (f" '{sel.label}'" if sel.label else "") if sel.fs else ""
        model = f", {sel.model}" if sel.model else ""
        return f"{sel.path if not sel.windowed else sel.name} ({what}, {human_bytes(sel.size)}{fs}{model})"
    if isinstance(sel, ImageFile):
        return f"image {sel.path} ({human_bytes(sel.size)})"
    return f"backup set {sel.path}"


def text(values: Values, name: str) -> str:
    value = values.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def flag(values: Values, name: str) -> bool:
    return values.get(name) is True


def number(values: Values, name: str, flag_name: str) -> int:
    try:
        return int(text(values, name))
    except ValueError:
        raise UsageError(f"{flag_name} must be a whole number, not {text(values, name)!r}") from None
