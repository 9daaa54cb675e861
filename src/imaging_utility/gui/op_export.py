"""The export operation: an image (or one disk of a set, one partition or one named volume) as a virtual disk
(``ops.export``).

The same formats, defaults and checks as ``export``: the format from OUT's extension unless chosen, OUT
written as ``OUT.partial`` and renamed when complete (a cancelled export leaves neither).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from ..errors import UsageError
from ..export import FORMATS
from ..ops.export import ExportResult, export, open_export_source
from ..ops.imaging import PROGRAM
from ..progress import JobControl, ProgressCallback
from ..units import human_bytes, parse_size
from .job import Plan, Warn
from .operation import BackupSet, Field, ImageFile, Selection, Values, flag, number, set_disk_fields, text

EXTENSIONS = {".vhdx": "vhdx", ".vhd": "vhd", ".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw"}
FROM_NAME = "from the name"


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    for suffix in (".001", ".zst", ".img"):
        base = base.removesuffix(suffix)
    return base or "disk"


class ExportOperation:
    key = "export"
    title = "Export: a VHDX, VHD, qcow2, VMDK or raw virtual disk"

    def accepts(self, sel: Selection) -> bool:
        return isinstance(sel, ImageFile | BackupSet)

    def fields(self, sel: Selection) -> list[Field]:
        return [
            *set_disk_fields(sel),
            Field("out", "Output file", os.path.abspath(f"{_stem(sel.path)}.vhdx"), help="OUT"),
            Field("format", "Format", FROM_NAME,
                  choices=((FROM_NAME, "from OUT's extension"), *((f, f) for f in FORMATS))),
            Field("partition", "Partition", "", help="a number: that partition only; empty: the whole disk"),
            Field("volume", "Volume", "", help="a name as serve-proxy exports it (vg0-root, imsm_Data…): that one"),
            Field("block_size", "Block size", "", help="empty: the format's default"),
            Field("azure", "Azure (fixed VHD, whole MiB)", False),
            Field("compress", "qcow2: compressed clusters", False),
            Field("threads", "Threads", "", help="empty: one per CPU"),
            Field("force", "Overwrite an existing file", False),
        ]

    def _request(self, sel: Selection, values: Values) -> tuple[list[str], dict[str, Any]]:
        out = text(values, "out")
        if not out:
            raise UsageError("export needs an output file OUT")
        fmt = text(values, "format") or FROM_NAME
        if fmt == FROM_NAME:
            ext = os.path.splitext(out)[1].lower()
            if ext not in EXTENSIONS:
                raise UsageError(f"cannot tell the format from the name {out!r}: choose a format")
            chosen, fmt = None, EXTENSIONS[ext]
        elif fmt in FORMATS:
            chosen = fmt
        else:
            raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        partition = number(values, "partition", "--partition") if text(values, "partition") else None
        threads = number(values, "threads", "--threads") if text(values, "threads") else None
        block = parse_size(text(values, "block_size"), "--block-size") if text(values, "block_size") else None
        disk = (text(values, "disk") or None) if isinstance(sel, BackupSet) else None
        volume = text(values, "volume") or None
        argv = [PROGRAM, "export"]
        for name, value in (("--format", chosen), ("--disk", disk), ("--partition", partition), ("--volume", volume),
                            ("--block-size", text(values, "block_size") or None), ("--threads", threads)):
            if value is not None:
                argv += [name, str(value)]
        for name, key in (("--azure", "azure"), ("--compress", "compress"), ("--force", "force")):
            if flag(values, key):
                argv.append(name)
        request = {"disk": disk, "partition": partition, "volume": volume, "out": out, "fmt": fmt, "block_size": block,
                   "threads": threads, "azure": flag(values, "azure"), "compress": flag(values, "compress"),
                   "force": flag(values, "force")}
        return [*argv, sel.path, out], request

    def command(self, sel: Selection, values: Values) -> str:
        return shlex.join(self._request(sel, values)[0])

    def plan(self, sel: Selection, values: Values) -> Plan:
        argv, r = self._request(sel, values)
        path = sel.path
        src = open_export_source(path, disk=r["disk"], partition=r["partition"], volume=r["volume"])  # checks first
        src.close()

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            src = open_export_source(path, disk=r["disk"], partition=r["partition"], volume=r["volume"])
            try:
                if src.bad_ranges:
                    total = sum(n for _, n in src.bad_ranges)
                    warn(f"the image has {len(src.bad_ranges)} unreadable source ranges ({total} bytes) in what "
                         "is exported; they are exported as zeros")
                result = export(src, r["out"], r["fmt"], block_size=r["block_size"], azure=r["azure"],
                                compress=r["compress"], threads=r["threads"], force=r["force"], progress=progress,
                                control=control)
            finally:
                src.close()
            for note in result.notes:
                warn(note)
            return summary_lines(result)

        return Plan(f"export {path} → {r['out']}", shlex.join(argv), run)


def summary_lines(result: ExportResult) -> list[str]:
    return [f"exported {human_bytes(result.virtual_size)} to {result.out} ({result.format}) in "
            f"{result.elapsed:.1f} s",
            f"file {human_bytes(result.file_size)}, {human_bytes(result.allocated_bytes)} on disk, "
            f"{human_bytes(result.nonzero_bytes)} of data",
            f"id {result.identity['id']}"]
