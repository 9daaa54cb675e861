#!/usr/bin/env python3
"""Export benchmark: ``imaging-utility export`` from our image vs ``qemu-img convert`` from the raw file
and vs the two-step route (``zstd -dc`` the image to a raw file, then ``qemu-img convert``).

    .venv/bin/python benchmarks/run.py --only export [--reps 3]
    .venv/bin/python benchmarks/bench_export.py [--formats vhdx,qcow2] [--sources mixed,ntfs] [--reps 3]

Sources: ``mixed.raw`` (2 GiB, full image) and the 4 GiB NTFS corpus volume imaged ``--used-only``
(its raw file is what that image stands for: the used clusters, zeros elsewhere).  ``qemu-img convert``
by default does not flush its output (cache=unsafe); ``export`` fsyncs before renaming, so a second peer
row, ``-t writeback``, is qemu-img flushing at the end too.  Also printed: output size on disk, peak RSS,
and for the used-only volume the size of each dynamic export against its used data.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PY, TOOL, MiB, Run, timed, warm

FORMATS = ["vhdx", "qcow2", "vhd", "vmdk", "vmdk-stream", "qcow2-zstd", "raw"]
# our format and options -> qemu-img convert's -O and -o
QEMU = {
    "vhdx": (["-O", "vhdx"], []), "vhd": (["-O", "vpc", "-o", "subformat=dynamic,force_size=on"], []),
    "qcow2": (["-O", "qcow2"], []), "qcow2-zstd": (["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
                                                   ["--compress"]),
    "vmdk": (["-O", "vmdk"], []), "vmdk-stream": (["-O", "vmdk", "-o", "subformat=streamOptimized"], []),
    "raw": (["-O", "raw"], []),
}
OURS = {"qcow2-zstd": "qcow2"}


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _prepare(corpus: Path, work: Path, name: str) -> tuple[Path, Path, int]:
    """(our image, the raw file it stands for, used bytes) of one source, built once."""
    q = shlex.quote
    if name == "mixed":
        raw = corpus / "mixed.raw"
        img = work / "export-mixed.img"
        if not img.exists():
            subprocess.run([*TOOL, "image", "--force", str(raw), str(img)], check=True, stdout=subprocess.DEVNULL)
        return img, raw, raw.stat().st_size
    src = corpus / "ntfs.raw"
    if not src.exists():
        raise SystemExit(f"export benchmark needs {src}: build it with make_corpus.py --only ntfs")
    img, raw = work / "export-ntfs-used.img", work / "export-ntfs-used.raw"
    if not img.exists():
        subprocess.run([*TOOL, "image", "--force", "--used-only", str(src), str(img)], check=True,
                       stdout=subprocess.DEVNULL)
    if not raw.exists():
        subprocess.run(f"zstd -q -dc {q(str(img))} > {q(str(raw))}", shell=True, check=True)
    info = json.loads(subprocess.run([*TOOL, "info", "--json", str(img)], capture_output=True, text=True,
                                     check=True).stdout)
    return img, raw, int(info["used_only"]["used_bytes"])


def bench_export(corpus: Path, work: Path, reps: int, formats: list[str] | None = None,
                 sources: list[str] | None = None) -> None:
    for tool in ("qemu-img", "zstd"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"export benchmark needs {tool}")
    formats = formats or FORMATS
    q = shlex.quote
    tmp_raw = work / "export-two-step.raw"
    print(f"\n## export — median of {reps}, interleaved; speed = source bytes / wall; ratio = peer wall / ours\n")
    print("| source | format | route | wall | source MiB/s | output (on disk) | CPU | peak RSS | ours vs route |")
    print("|---|---|---|---|---|---|---|---|---|")
    size_rows = []
    for name in sources or ["mixed", "ntfs"]:
        img, raw, used = _prepare(corpus, work, name)
        n = raw.stat().st_size
        label = f"{name}.raw (2 GiB, full)" if name == "mixed" else "ntfs.raw (4 GiB, used-only)"
        for fmt in formats:
            qargs, ours_opts = QEMU[fmt]
            ext = OURS.get(fmt, fmt).split("-")[0]
            out_ours, out_q, out_t = (work / f"export-{k}.{ext}" for k in ("ours", "qemu", "two"))
            ours_fmt = OURS.get(fmt, fmt)
            qemu = ["qemu-img", "convert", "-f", "raw", *qargs]
            outputs = {"ours": out_ours, "qemu": out_q, "qemu-wb": out_q, "two": out_t}
            cmds: dict[str, list[str] | str] = {
                "ours": [*TOOL, "export", str(img), str(out_ours), "-f", ours_fmt, *ours_opts],
                "qemu": [*qemu, str(raw), str(out_q)],
                "qemu-wb": [*qemu[:2], "-t", "writeback", *qemu[2:], str(raw), str(out_q)],
                "two": (f"zstd -q -dc {q(str(img))} > {q(str(tmp_raw))} && "
                        f"{shlex.join(qemu)} {q(str(tmp_raw))} {q(str(out_t))}"),
            }
            warm(img)
            warm(raw)
            runs: dict[str, list[Run]] = {k: [] for k in cmds}
            try:
                for _ in range(reps):  # interleaved: A B C D, A B C D, ... (each after removing its own output)
                    for key, cmd in cmds.items():
                        subprocess.run(f"rm -f {q(str(outputs[key]))} {q(str(tmp_raw))}; sync; sleep 1",
                                       shell=True, check=True)
                        runs[key].append(timed(cmd, shell=isinstance(cmd, str)))
            except BaseException:
                for path in (*outputs.values(), tmp_raw):
                    path.unlink(missing_ok=True)
                raise
            res = {k: Run(statistics.median(r.wall for r in rs), statistics.median(r.cpu for r in rs),
                          max(r.rss_mib for r in rs)) for k, rs in runs.items()}
            # the outputs of the last round are still there: their sizes
            sizes = {k: (_allocated(p), p.stat().st_size) for k, p in outputs.items() if p.exists()}
            ours = res["ours"]
            for key, route in (("ours", f"`export -f {ours_fmt}{' ' + ' '.join(ours_opts) if ours_opts else ''}`"),
                               ("qemu", f"`qemu-img convert {' '.join(qargs)}` from raw"),
                               ("qemu-wb", "same, `-t writeback` (flushed, like ours)"),
                               ("two", "`zstd -dc` to raw, then `qemu-img convert`")):
                r = res[key]
                out = f"{sizes[key][0] / MiB:,.0f} MiB" if key in sizes else "—"
                ratio = "—" if key == "ours" else f"{r.wall / ours.wall:.2f}×"
                print(f"| {label} | {fmt} | {route} | {r.wall:.2f} s | {n / r.wall / MiB:,.0f} | {out} | "
                      f"{r.cpu:.1f} s | {r.rss_mib:,.0f} MiB | {ratio} |")
            if name == "ntfs" and fmt != "raw":
                size_rows.append((fmt, sizes["ours"][1], sizes["ours"][0], used))
            for path in (*outputs.values(), tmp_raw):
                path.unlink(missing_ok=True)
    if size_rows:
        print("\nused-only NTFS volume: export size against its used data "
              f"({size_rows[0][3] / MiB:,.0f} MiB used of 4,096 MiB)\n")
        print("| format | file size | ratio | allocated on disk | ratio |")
        print("|---|---|---|---|---|")
        for fmt, apparent, allocated, used in size_rows:
            print(f"| {fmt} | {apparent / MiB:,.0f} MiB | {apparent / used:.3f}× | {allocated / MiB:,.0f} MiB | "
                  f"{allocated / used:.3f}× |")


def _run_alone() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/iu-corpus"))
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/iu-bench"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--sources", default="mixed,ntfs")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(), "tool": PY}))
    bench_export(args.corpus, args.work, args.reps, args.formats.split(","), args.sources.split(","))
    return 0


if __name__ == "__main__":
    raise SystemExit(_run_alone())
