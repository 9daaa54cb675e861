"""The verify operation: every chunk and the whole-image digests, or a random sample (``image.verify``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..errors import UsageError, VerificationError
from ..image.digests import parse_hash_names
from ..image.verify import VerifyReport, verify_image
from ..ops.imaging import PROGRAM
from ..ops.manifest import load_manifest, open_image_or_set
from ..progress import JobControl, ProgressCallback
from .job import Plan, Warn
from .operation import BackupSet, Field, ImageFile, Selection, Values, flag, number, text


@dataclass
class _Args:
    quick: bool
    samples: int | None
    seed: int | None
    extra: tuple[str, ...]


class VerifyOperation:
    key = "verify"
    title = "Verify: check every chunk and the digests"

    def accepts(self, sel: Selection) -> bool:
        return isinstance(sel, ImageFile | BackupSet)

    def fields(self, sel: Selection) -> list[Field]:
        return [
            Field("quick", "Quick: a random sample of chunks only", False),
            Field("samples", "Samples (quick)", "", help="empty: enough to catch 1% damage with 95% probability"),
            Field("seed", "Seed (quick)", "", help="repeat an earlier sample"),
            Field("hash", "Also compute", "", help="e.g. sha256 (a full verify only)"),
        ]

    def _args(self, sel: Selection, values: Values) -> tuple[list[str], _Args]:
        assert isinstance(sel, ImageFile | BackupSet)
        quick = flag(values, "quick")
        samples = number(values, "samples", "--samples") if text(values, "samples") else None
        seed = number(values, "seed", "--seed") if text(values, "seed") else None
        extra = parse_hash_names(text(values, "hash")) if text(values, "hash") else ()
        if extra and quick:
            raise UsageError("--hash needs a full verify (every chunk); drop --quick")
        if samples is not None and samples < 1:
            raise UsageError("--samples must be at least 1")
        argv = [PROGRAM, "verify"]
        if quick:
            argv.append("--quick")
            if samples is not None:
                argv += ["--samples", str(samples)]
            if seed is not None:
                argv += ["--seed", str(seed)]
        if extra:
            argv += ["--hash", ",".join(extra)]
        return [*argv, sel.path], _Args(quick, samples, seed, extra)

    def command(self, sel: Selection, values: Values) -> str:
        return shlex.join(self._args(sel, values)[0])

    def plan(self, sel: Selection, values: Values) -> Plan:
        argv, a = self._args(sel, values)
        path = sel.path

        # a backup set: every disk of it, like the command
        disks = [d["name"] for d in load_manifest(path)["disks"]] if isinstance(sel, BackupSet) else [None]

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            lines: list[str] = []
            for disk in disks:
                with open_image_or_set(path, disk) as reader:
                    report = verify_image(reader, quick=a.quick, samples=a.samples, seed=a.seed,
                                          extra_digests=a.extra, progress=progress, control=control)
                found = report_lines(report)
                lines += [f"disk {disk}:", *found] if disk is not None else found
                if not report.ok:
                    for line in found:
                        warn(line)
                    what = f"{path} disk {disk}" if disk is not None else path
                    raise VerificationError(f"{what}: verification FAILED ({len(report.failures)} chunks, "
                                            f"{len(report.problems)} other problems)")
            return lines

        return Plan(f"verify {path}", shlex.join(argv), run)


def report_lines(report: VerifyReport) -> list[str]:
    lines = [f"FAILED chunk {f['chunk']} at byte offset {f['offset']}: {f['error']}" for f in report.failures]
    lines += [f"FAILED {p}" for p in report.problems]
    for name, d in report.digests.items():
        if d["actual"] is None:
            lines.append(f"{name} {d['expected']} not computed (chunks failed)")
        elif d["expected"] is None:
            lines.append(f"{name} {d['actual']} (computed now; not stored in the image)")
        else:
            lines.append(f"{name} {d['expected']} " + ("ok" if d["ok"] else f"MISMATCH (computed {d['actual']})"))
    if report.detection:
        lines.append(report.detection)
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{report.chunks_checked} of {report.chunk_count} chunks checked: {verdict}")
    return lines
