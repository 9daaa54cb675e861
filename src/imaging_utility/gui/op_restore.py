"""The restore operation: an image onto a file or a block device (``ops.restore``), and a whole-disk image
onto a disk as the command writes it (``ops.restore_disk``: its partition table fitted to a disk of another
size, free space skipped).

The same refusals as the command, before anything is asked or written: a mounted
or busy target, a device smaller than the image (for a whole disk: one its partitions do not fit, or a
smaller one without "allow smaller"), an existing file without "overwrite".  A device is only written after
the user typed its name (``sdc``) under the description of what is about to be overwritten
(``ops.restore_target``) and, for a whole disk, of the table it gets.
"""

from __future__ import annotations

import shlex

from ..devices.mounts import check_target_safe
from ..errors import RefusedError, UsageError
from ..ops.diskmap import partition_table_of
from ..ops.imaging import PROGRAM
from ..ops.manifest import open_image_or_set
from ..ops.restore import restore
from ..ops.restore_disk import DiskRestorePlan, plan_disk_restore, run_disk_restore
from ..ops.restore_target import describe_device, inspect_target
from ..ops.target import is_block_device
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
            Field("force", "Overwrite a file, or a disk holding another disk's table", False),
            Field("allow_smaller", "Whole disk: allow a smaller disk that every partition fits", False),
            Field("new_ids", "Whole GPT disk: new disk and partition identifiers", False),
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
        argv += [option for key, option in (("force", "--force"), ("allow_smaller", "--allow-smaller"),
                                            ("new_ids", "--new-ids")) if flag(values, key)]
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
        fit = {"allow_smaller": flag(values, "allow_smaller"), "new_ids": flag(values, "new_ids")}
        disk = (text(values, "disk") or None) if isinstance(sel, BackupSet) else None
        with open_image_or_set(image, disk) as reader:
            size = reader.size
            if partition_table_of(reader) is not None and is_block_device(target):
                check_target_safe(target)  # a whole disk onto a disk: as the command, table fitted to it
                disk_plan = plan_disk_restore(reader, target, force=force, **fit)
                lines = [*describe_device(target, disk_plan.target.size, None), *_plan_lines(disk_plan, image)]
                asked = Confirmation(f"Overwrite {target}?", lines, typed=disk_plan.target.name, accept="Restore")
                return self._disk_plan(argv, image, disk, target, force, verify, threads, fit, asked)
        info = inspect_target(target, size, force=force)
        confirmation = None
        if info.needs_confirmation:
            confirmation = Confirmation(
                f"Overwrite {target}?",
                [*info.lines, f"This overwrites {target} with {human_bytes(size)} from {image}."],
                typed=info.name, accept="Restore")

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            with open_image_or_set(image, disk) as reader:
                _warn_bad(reader.bad_ranges, warn)
                result = restore(reader, target, force=force, confirm=lambda: plan.confirmed, threads=threads,
                                 verify=verify, progress=progress, control=control)
            lines = [f"restored {human_bytes(result.bytes_total)} to {result.target} in {result.elapsed:.1f} s "
                     f"({human_bytes(result.bytes_written)} written, {result.holes} zero chunks "
                     + ("left as holes)" if not result.is_device else "written as zeros)")]
            lines += [f"{name} {d['actual']} ok" for name, d in result.digests.items()]
            return lines

        plan = Plan(f"restore {image} → {target}", shlex.join(argv), run, confirmation=confirmation)
        return plan

    @staticmethod
    def _disk_plan(argv: list[str], image: str, disk: str | None, target: str, force: bool, verify: bool,
                   threads: int | None, fit: dict[str, bool], confirmation: Confirmation) -> Plan:
        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            if not plan.confirmed:
                raise RefusedError(f"{target} was not confirmed; nothing was written")
            with open_image_or_set(image, disk) as reader:
                _warn_bad(reader.bad_ranges, warn)
                result = run_disk_restore(plan_disk_restore(reader, target, force=force, **fit), verify=verify,
                                          threads=threads, progress=progress, control=control)
            for c in result.corrupt:
                warn(f"chunk {c.chunk} (bytes {c.offset}..{c.offset + c.length}) is corrupt and was zero-filled")
            lines = [f"restored disk {image} to {result.target} in {result.elapsed:.1f} s: "
                     f"{human_bytes(result.bytes_written)} written, {human_bytes(result.bytes_free)} of free space "
                     f"skipped, partition table {'rewritten for the target' if result.table_rewritten else 'kept'}"]
            return lines + [f"partition {c.number} {c.method} {c.actual or 'equal to the image'} ok"
                            for c in result.checks]

        plan = Plan(f"restore {image} → {target}", shlex.join(argv), run, confirmation=confirmation)
        return plan


def _plan_lines(plan: DiskRestorePlan, image: str) -> list[str]:
    """What the disk gets, as the command shows it before asking."""
    t = plan.table
    scheme = (t.scheme or "?").upper()
    lines = [f"Every partition on it is overwritten with the disk in {image} ({human_bytes(plan.reader.size)}, "
             f"{scheme}, {len(t.partitions)} partitions):"]
    lines += [f"  partition {p.number}: {human_bytes(p.length)} at {human_bytes(p.offset)}, {p.type}"
              for p in t.partitions]
    if plan.size_change != "same":
        lines.append(f"  the target is {human_bytes(abs(plan.target.size - plan.reader.size))} {plan.size_change}"
                     + ("; the backup GPT goes to its end" if t.gpt is not None else ""))
    if plan.new_ids:
        lines.append("  with new disk and partition identifiers")
    return lines + [f"  differs: {line}" for line in plan.differences]


def _warn_bad(bad: list[tuple[int, int]], warn: Warn) -> None:
    if bad:
        warn(f"the image has {len(bad)} unreadable source ranges ({sum(n for _, n in bad)} bytes); "
             "they are restored as zeros")
