"""The restore operation: an image onto a file or a block device (``ops.restore``).

The same refusals as the command, before anything is asked or written: a mounted
or busy target, a device smaller than the image, an existing file without
"overwrite".  A device is only written after the user typed its name (``sdc``) under the
description of what is about to be overwritten (``ops.restore_target``).
"""

from __future__ import annotations

import shlex

from ..errors import RefusedError, UsageError
from ..ops.diskmap import partition_table_of
from ..ops.imaging import PROGRAM
from ..ops.manifest import open_image_or_set
from ..ops.restore import restore
from ..ops.restore_target import inspect_target
from ..progress import JobControl, ProgressCallback
from ..units import human_bytes
from .job import Confirmation, Plan, Warn
from .operation import BackupSet, Field, ImageFile, Selection, Values, flag, number, set_disk_fields, text


class RestoreOperation:
    key = "restore"
    title = "Restore: write this image to a disk or a file"

    def __init__(self, targets: tuple[str, ...] = ()) -> None:
        self.targets = targets  # device paths offered as suggestions

    def accepts(self, sel: Selection) -> bool:
        return isinstance(sel, ImageFile | BackupSet)

    def fields(self, sel: Selection) -> list[Field]:
        return [
            *set_disk_fields(sel),
            Field("target", "Target", "", help="a block device or a file path", suggestions=self.targets),
            Field("force", "Overwrite an existing target file", False),
            Field("verify", "Verify the digests while writing", False),
            Field("threads", "Threads", "", help="empty: one per CPU"),
        ]

    def _argv(self, sel: Selection, values: Values) -> tuple[list[str], int | None]:
        target = text(values, "target")
        if not target:
            raise UsageError("restore needs a TARGET: a block device or a file path")
        threads = number(values, "threads", "--threads") if text(values, "threads") else None
        if threads is not None and threads < 1:
            raise UsageError("--threads must be at least 1")
        argv = [PROGRAM, "restore"]
        if isinstance(sel, BackupSet) and text(values, "disk"):
            argv += ["--disk", text(values, "disk")]
        if flag(values, "force"):
            argv.append("--force")
        if flag(values, "verify"):
            argv.append("--verify")
        if threads is not None:
            argv += ["--threads", str(threads)]
        return [*argv, sel.path, target], threads

    def command(self, sel: Selection, values: Values) -> str:
        return shlex.join(self._argv(sel, values)[0])

    def plan(self, sel: Selection, values: Values) -> Plan:
        argv, threads = self._argv(sel, values)
        image, target = sel.path, text(values, "target")
        force, verify = flag(values, "force"), flag(values, "verify")
        disk = (text(values, "disk") or None) if isinstance(sel, BackupSet) else None
        with open_image_or_set(image, disk) as reader:
            size = reader.size
            whole_disk = partition_table_of(reader) is not None
        info = inspect_target(target, size, force=force)
        if whole_disk and info.kind == "device" and info.size != size:
            # the command rewrites the partition table for the target's size (ops.restore_disk)
            raise RefusedError(f"{image} is a whole disk of {size} bytes and {target} holds {info.size}: its "
                               f"partition table must be fitted to it; run '{shlex.join(argv)}' from a shell")
        confirmation = None
        if info.needs_confirmation:
            confirmation = Confirmation(
                f"Overwrite {target}?",
                [*info.lines, f"This overwrites {target} with {human_bytes(size)} from {image}."],
                typed=info.name, accept="Restore")

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            with open_image_or_set(image, disk) as reader:
                if reader.bad_ranges:
                    total = sum(n for _, n in reader.bad_ranges)
                    warn(f"the image has {len(reader.bad_ranges)} unreadable source ranges ({total} bytes); "
                         "they are restored as zeros")
                result = restore(reader, target, force=force, confirm=lambda: plan.confirmed, threads=threads,
                                 verify=verify, progress=progress, control=control)
            lines = [f"restored {human_bytes(result.bytes_total)} to {result.target} in {result.elapsed:.1f} s "
                     f"({human_bytes(result.bytes_written)} written, {result.holes} zero chunks "
                     + ("left as holes)" if not result.is_device else "written as zeros)")]
            lines += [f"{name} {d['actual']} ok" for name, d in result.digests.items()]
            return lines

        plan = Plan(f"restore {image} → {target}", shlex.join(argv), run, confirmation=confirmation)
        return plan
