"""The backup-disk operation: a whole disk into a backup set (``ops.backup``), used data only.

The same options, defaults and checks as ``backup-disk``: partitions with a known filesystem keep their used
blocks, everything else is kept in full, and the set's manifest is written beside the image.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from ..devices.throttle import parse_rate
from ..errors import UsageError
from ..image.digests import DEFAULT, parse_hash_names
from ..ops.backup import BackupOptions, BackupResult, backup_disks
from ..ops.capture import CaptureOptions
from ..ops.imaging import PROGRAM, default_threads
from ..ops.inventory import Volume
from ..progress import JobControl, ProgressCallback
from ..units import format_size, human_bytes, parse_size
from .job import Confirmation, Plan, Warn
from .operation import Field, Selection, Values, flag, number, text


class BackupDiskOperation:
    key = "backup-disk"
    title = "Backup-disk: this whole disk into a backup set (used data only)"

    def accepts(self, sel: Selection) -> bool:
        return isinstance(sel, Volume) and sel.is_disk

    def fields(self, sel: Selection) -> list[Field]:
        assert isinstance(sel, Volume)
        d = CaptureOptions()
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", sel.name).strip("-") or "disk"
        return [
            Field("dir", "Set directory", os.path.abspath(f"{name}-backup"), help="DIR"),
            Field("level", "zstd level", str(d.level), help="1..22"),
            Field("chunk_size", "Chunk size", format_size(d.chunk_size), help="64K..256M"),
            Field("threads", "Threads", str(default_threads())),
            Field("split_size", "Split size", "", help="e.g. 4G; empty: one file per disk"),
            Field("hash", "Digests", ",".join(DEFAULT), help="sha256,blake3,md5 or none"),
            Field("max_throughput", "Max read rate", "", help="e.g. 100M; empty: no cap"),
            Field("resume", "Resume a partial set", False),
            Field("force", "Replace an existing set", False),
            Field("direct", "O_DIRECT reads (bypass the page cache)", False),
            Field("buffered", "Buffered reads only (no O_DIRECT, even for whole chunks)", False),
            Field("rescue", "Rescue: go on past unreadable sectors", False),
            Field("retries", "Rescue retries", "1"),
        ]

    def _request(self, sel: Selection, values: Values) -> tuple[list[str], Callable[[], BackupOptions], str]:
        """The equivalent command line, a maker of the options (validated here, built fresh per run), DIR."""
        assert isinstance(sel, Volume)
        set_dir = text(values, "dir")
        if not set_dir:
            raise UsageError("backup-disk needs a set directory DIR")
        level, threads, retries = (number(values, k, flag_name) for k, flag_name in
                                   (("level", "--level"), ("threads", "--threads"), ("retries", "--retries")))
        if retries < 0:
            raise UsageError("--retries must be 0 or more")
        force, resume = flag(values, "force"), flag(values, "resume")
        if force and resume:
            raise UsageError("--force and --resume exclude each other")
        kw: dict[str, Any] = {
            "chunk_size": parse_size(text(values, "chunk_size"), "--chunk-size"), "level": level, "threads": threads,
            "split_size": parse_size(text(values, "split_size"), "--split-size") if text(values, "split_size")
            else None,
            "digests": parse_hash_names(text(values, "hash")), "force": force, "resume": resume,
        }
        rate = parse_rate(text(values, "max_throughput")) if text(values, "max_throughput") else None
        rescue, direct, buffered = flag(values, "rescue"), flag(values, "direct"), flag(values, "buffered")
        if direct and buffered:
            raise UsageError("--direct and --buffered exclude each other")
        CaptureOptions(**kw).validate()

        def options() -> BackupOptions:
            return BackupOptions(capture=CaptureOptions(**kw), rescue=rescue, retries=retries, direct=direct,
                                 buffered=buffered, max_throughput=rate, allow_mounted=sel.read_write)

        d = CaptureOptions()
        argv = [PROGRAM, "backup-disk"]
        pairs: list[tuple[str, object, object, Callable[[Any], str]]] = [
            ("--chunk-size", kw["chunk_size"], d.chunk_size, format_size),
            ("--level", level, d.level, str),
            ("--threads", threads, default_threads(), str),
            ("--split-size", kw["split_size"], None, format_size),
            ("--hash", kw["digests"], d.digests, lambda v: ",".join(v) or "none"),
            ("--retries", retries if rescue else 1, 1, str),
            ("--max-throughput", rate, None, format_size),
        ]
        for name, value, default, spell in pairs:
            if value != default and value is not None:
                argv += [name, spell(value)]
        for name, on in (("--direct", direct), ("--buffered", buffered), ("--rescue", rescue),
                         ("--allow-mounted", sel.read_write), ("--resume", resume), ("--force", force)):
            if on:
                argv.append(name)
        return [*argv, sel.path, set_dir], options, set_dir

    def command(self, sel: Selection, values: Values) -> str:
        return shlex.join(self._request(sel, values)[0])

    def plan(self, sel: Selection, values: Values) -> Plan:
        assert isinstance(sel, Volume)
        argv, options, set_dir = self._request(sel, values)
        resume_argv = [a for a in argv if a != "--force"]
        if "--resume" not in resume_argv:
            resume_argv.insert(2, "--resume")
        confirmation = None
        if sel.read_write:
            confirmation = Confirmation(
                f"{sel.path} is in use", [*(f"mounted {m}" for m in sel.mounts),
                                          "Files may change while they are read: the backup may be inconsistent.",
                                          "Unmount it or remount it read-only first, or back it up anyway."],
                accept="Back up anyway")

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            return summary_lines(backup_disks([sel.path], set_dir, options(), progress=progress, on_warning=warn,
                                              control=control))

        return Plan(f"backup-disk {sel.path} → {set_dir}", shlex.join(argv), run,
                    resume_command=shlex.join(resume_argv), confirmation=confirmation, output_label="compressed")


def summary_lines(result: BackupResult) -> list[str]:
    lines = []
    for d in result.disks:
        e = d.entry
        ratio = f" ({e['image_bytes'] / e['size'] * 100:.1f}%)" if e.get("size") else ""
        lines.append(f"{d.name}: {d.source} → {os.path.join(result.set_dir, d.image[0])}"
                     + (" (kept from the earlier run)" if d.kept else ""))
        lines.append(f"{human_bytes(e['size'])} disk, {human_bytes(e.get('used_bytes') or 0)} stored, image "
                     f"{human_bytes(e['image_bytes'])}{ratio}; {len(e.get('partitions', []))} partitions")
    lines.append(f"set {result.manifest}, {human_bytes(result.source_bytes)} in {result.elapsed:.1f} s")
    if result.bad_ranges:
        lines.append(f"{result.bad_ranges} unreadable ranges were zero-filled and recorded; 'info' lists them")
    return lines
