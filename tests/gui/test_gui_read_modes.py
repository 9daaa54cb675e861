"""The image and backup forms offer both read modes of the CLI: ``--direct`` and ``--buffered``, which
exclude each other; the equivalent command line and the options carry the one chosen."""

from __future__ import annotations

import pytest

from imaging_utility.errors import UsageError
from imaging_utility.gui.op_backup import BackupDiskOperation
from imaging_utility.gui.op_image import ImageOperation
from imaging_utility.ops.inventory import Volume


def _values(op: ImageOperation | BackupDiskOperation, sel: Volume, **chosen: str | bool) -> dict[str, str | bool]:
    values: dict[str, str | bool] = {f.name: f.default for f in op.fields(sel)}
    values.update(chosen)
    return values


def test_image_form_buffered_and_direct() -> None:
    sel, op = Volume("loop9", "/dev/loop9", 1 << 30), ImageOperation()
    req = op.request(sel, _values(op, sel, dest="/srv/d.img.zst", buffered=True))
    assert req.buffered and not req.direct
    assert op.command(sel, _values(op, sel, dest="/srv/d.img.zst", buffered=True)).split()[-3:] == [
        "--buffered", "/dev/loop9", "/srv/d.img.zst"]
    assert "--buffered" not in op.command(sel, _values(op, sel, dest="/srv/d.img.zst"))
    with pytest.raises(UsageError, match="--direct and --buffered exclude each other"):
        op.request(sel, _values(op, sel, dest="/srv/d.img.zst", buffered=True, direct=True))


def test_backup_form_buffered_and_direct() -> None:
    sel, op = Volume("loop9", "/dev/loop9", 1 << 30), BackupDiskOperation()
    argv = op.command(sel, _values(op, sel, dir="/srv/set", buffered=True)).split()
    assert argv[-3:] == ["--buffered", "/dev/loop9", "/srv/set"]
    assert "--buffered" not in op.command(sel, _values(op, sel, dir="/srv/set")).split()
    with pytest.raises(UsageError, match="--direct and --buffered exclude each other"):
        op.command(sel, _values(op, sel, dir="/srv/set", buffered=True, direct=True))
