"""The operations the GUI offers, in menu order.  Adding one: a module with a class like
``op_verify.VerifyOperation`` (fields, command, plan) and a line here."""

from __future__ import annotations

from .op_backup import BackupDiskOperation
from .op_export import ExportOperation
from .op_image import ImageOperation
from .op_restore import RestoreOperation
from .op_verify import VerifyOperation
from .operation import Operation


def default_operations(restore_targets: tuple[str, ...] = ()) -> list[Operation]:
    return [ImageOperation(), BackupDiskOperation(), VerifyOperation(), RestoreOperation(restore_targets),
            ExportOperation()]
