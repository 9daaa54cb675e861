"""Whole-disk backup and restore against the Clonezilla route, on the same 8 GiB GPT disk in the same run.

    .venv/bin/python benchmarks/run.py --only backup [--reps 3] [--work DIR]

The disk (built once, cached in WORK): GPT with an ESP (FAT32, 512 MiB), NTFS (3.5 GiB) and ext4 (the
rest), about 3 GiB of files from ``shared/corpus/make_corpus.py``'s tree generator, and random bytes in
all free space, attached read-only as a loop device with partition nodes (``partx -a``).

The Clonezilla route, as ``ocs-sr`` runs it: ``sfdisk -d``, ``dd`` of the first MiB and of the last 33
sectors, then ``partclone.<fs> -c | zstd -T0 -3`` per partition; restore writes the table back
(``sfdisk``, then the saved sectors with ``dd``), makes the kernel see the partitions (``partx -a``) and runs
``zstd -dc | partclone.<fs> -r`` per partition.  partclone gets Clonezilla's 10 MiB buffer (``-z``) and no
checksums (``-a0``), its fastest setting.  The route runs twice: as shipped, and with partclone not
waiting up to 2 s for its progress thread at each exit (``peer_partclone.py``).  Both restores end with
the target's dirty pages on the disk (ours fsyncs; the route gets ``dd conv=fsync``).  Each restore target
is a fresh sparse 8 GiB file on a loop device.

Needs root and about 18 GiB free in WORK (the disk, both backups, one restore target at a time).
Prints wall time, disk MiB/s, output size, CPU, peak RSS and the ratios (targets: backup ≥ 1.5× the route's
throughput with output within 3% of its size, restore ≥ 1.2×, peak RSS ≤ 256 MiB).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_partclone import nowait_env  # noqa: E402
from run import TOOL, MiB, Run, timed  # noqa: E402

GiB = 1 << 30
DISK_SIZE = 8 * GiB
FS = {1: "vfat", 2: "ntfs", 3: "extfs"}  # partclone tool per partition
SEED = 20251123
PARTCLONE = "-z 10485760 -a0 -q"


def _corpus() -> ModuleType:
    for base in (HERE.parent.parent / "shared", Path("/work/shared")):
        script = base / "corpus" / "make_corpus.py"
        if script.exists():
            spec = importlib.util.spec_from_file_location("make_corpus", script)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit("backup benchmark needs shared/corpus/make_corpus.py")


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def loop(path: Path, read_only: bool = False) -> Iterator[str]:
    dev = sh(f"losetup --find --show {'-r' if read_only else ''} {path}").strip()
    try:
        sh(f"partx -a {dev} || true")
        yield dev
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def build_disk(work: Path) -> Path:
    disk, done = work / "backup-8g.raw", work / "backup-8g.ok"
    if disk.exists() and done.exists():
        return disk
    mc = _corpus()
    tg = mc.TextGen(SEED)
    stage, esp = work / "backup-stage", work / "backup-esp"
    print("building the 8 GiB benchmark disk (once) ...", flush=True)
    mc.make_tree(stage, 1400, SEED, tg, print)
    shutil.rmtree(esp, ignore_errors=True)
    esp.mkdir()
    total = 0
    for path in sorted(stage.rglob("*.bin")) + sorted(stage.rglob("*.txt")):
        if total > 160 * MiB:
            break
        shutil.copy(path, esp / f"{total:012d}{path.suffix}")
        total += path.stat().st_size
    mc.prefill_random(disk, DISK_SIZE, SEED, 77, print)
    sh(f"sgdisk -n 1:1M:+512M -t 1:ef00 -c 1:ESP -n 2:0:+3584M -t 2:0700 -c 2:data -n 3:0:0 -t 3:8300 "
       f"-c 3:root {disk}")
    with loop(disk) as dev:
        sh(f"mkfs.vfat -F 32 -n ESP {dev}p1")
        sh(f"MTOOLS_SKIP_CHECK=1 mcopy -s -i {dev}p1 {esp}/* ::/")
        sh(f"mkntfs -Q -F -L DATA {dev}p2")
        mnt = work / "backup-mnt"
        mnt.mkdir(exist_ok=True)
        sh(f"ntfs-3g {dev}p2 {mnt} && cp -r {stage}/. {mnt}/ && sync && umount {mnt}")
        sh(f"mkfs.ext4 -q -F -L ROOT -E nodiscard -d {stage} {dev}p3")
    shutil.rmtree(stage)
    shutil.rmtree(esp)
    done.touch()
    return disk


def _route_backup(dev: str, out: Path, env: str = "") -> str:
    parts = " && ".join(f"{env} partclone.{fs} -c {PARTCLONE} -s {dev}p{n} -o - | zstd -T0 -3 -q > {out}/p{n}.pc.zst"
                        for n, fs in FS.items())
    sectors = DISK_SIZE // 512
    return (f"mkdir -p {out} && sfdisk -d {dev} > {out}/table.sfdisk && "
            f"dd if={dev} of={out}/head.bin bs=1M count=1 status=none && "
            f"dd if={dev} of={out}/tail.bin bs=512 skip={sectors - 33} count=33 status=none && {parts}")


def _route_restore(src: Path, dev: str, env: str = "") -> str:
    parts = " && ".join(f"zstd -dc {src}/p{n}.pc.zst | {env} partclone.{fs} -r {PARTCLONE} -s - -o {dev}p{n}"
                        for n, fs in FS.items())
    sectors = DISK_SIZE // 512
    return (f"sfdisk -q --no-reread --no-tell-kernel {dev} < {src}/table.sfdisk && "
            f"dd if={src}/head.bin of={dev} bs=1M conv=notrunc status=none && "
            f"dd if={src}/tail.bin of={dev} bs=512 seek={sectors - 33} conv=notrunc status=none && "
            f"partx -a {dev} && {parts} && dd if=/dev/null of={dev} conv=fsync,notrunc status=none")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _row(name: str, r: Run, out: int | None, peer: Run, fast: Run) -> str:
    mib_s = DISK_SIZE / MiB / r.wall
    size = f"{out / MiB:,.1f} MiB" if out is not None else "—"
    return (f"| {name} | {r.wall:.2f} s | {mib_s:,.0f} | {size} | {r.cpu:.1f} s | {r.rss_mib:.0f} MiB | "
            f"{peer.wall / r.wall:.2f}× | {fast.wall / r.wall:.2f}× |")


def _target(work: Path, name: str) -> Path:
    path = work / name
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(DISK_SIZE)
    return path


def bench_backup(work: Path, reps: int) -> None:
    for tool in ("sgdisk", "sfdisk", "partx", "losetup", "mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "zstd",
                 *(f"partclone.{fs}" for fs in FS.values())):
        if shutil.which(tool) is None:
            raise SystemExit(f"backup benchmark needs {tool}")
    if os.geteuid() != 0:
        raise SystemExit("backup benchmark needs root (loop devices)")
    work.mkdir(parents=True, exist_ok=True)
    have = (work / "backup-8g.raw").exists() and (work / "backup-8g.ok").exists()
    need = (0 if have else DISK_SIZE + 2 * GiB) + 10 * GiB  # the disk (and its build), then outputs and a target
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"backup benchmark needs {need / GiB:.0f} GiB free in {work}")
    disk = build_disk(work)
    nowait = nowait_env(work)  # partclone without its up-to-2-s progress wait at exit (peer_partclone.py)
    routes = {"route": ""} | ({"route-nowait": nowait} if nowait else {})
    ours_dir, route_dir = work / "backup-ours", work / "backup-route"
    print(f"\n## whole-disk backup and restore — 8 GiB GPT disk (ESP FAT32, NTFS, ext4), median of {reps}\n")
    sh(f"cat {disk} > /dev/null")  # page cache warm for both
    with loop(disk, read_only=True) as src:
        runs: dict[str, list[Run]] = {k: [] for k in [*routes, "ours"]}
        for _ in range(reps):
            # all write new files into an empty directory (replacing a file makes ext4 flush the new one
            # at the rename or close, auto_da_alloc: that is not what is measured here)
            for key, env in routes.items():
                shutil.rmtree(route_dir, ignore_errors=True)
                runs[key].append(timed(_route_backup(src, route_dir, env), shell=True))
            shutil.rmtree(ours_dir, ignore_errors=True)
            runs["ours"].append(timed([*TOOL, "backup-disk", src, str(ours_dir)]))
    backup = {k: _median(v) for k, v in runs.items()}
    sizes = {"route": _size(route_dir), "ours": _size(ours_dir)}
    restore: dict[str, list[Run]] = {k: [] for k in [*routes, "ours"]}
    image = next(ours_dir.glob("*.img.zst"))
    for _ in range(reps):
        for key, env in routes.items():
            target = _target(work, "backup-target.raw")
            with loop(target) as dev:
                restore[key].append(timed(_route_restore(route_dir, dev, env), shell=True))
        target = _target(work, "backup-target.raw")
        with loop(target) as dev:
            restore["ours"].append(timed([*TOOL, "restore", "--yes", str(image), dev]))
            check = subprocess.run(["e2fsck", "-fn", f"{dev}p3"], capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"restored ext4 is not clean:\n{check.stdout}")
    rest = {k: _median(v) for k, v in restore.items()}
    (work / "backup-target.raw").unlink(missing_ok=True)
    fast = "route-nowait" if nowait else "route"
    if not nowait:
        print("no C compiler: partclone is measured as shipped only (with its progress wait)\n")
    print("| command | wall | disk MiB/s | output | CPU | peak RSS | speed vs route | vs route without wait |")
    print("|---|---|---|---|---|---|---|---|")
    print(_row("Clonezilla route: sfdisk -d, dd, `partclone -c \\| zstd -T0 -3` ×3", backup["route"],
               sizes["route"], backup["route"], backup[fast]))
    if nowait:
        print(_row("the same, partclone without its progress wait", backup[fast], sizes["route"], backup["route"],
                   backup[fast]))
    print(_row("`imaging-utility backup-disk`", backup["ours"], sizes["ours"], backup["route"], backup[fast]))
    print(_row("Clonezilla route restore: sfdisk, dd, `zstd -dc \\| partclone -r` ×3", rest["route"], None,
               rest["route"], rest[fast]))
    if nowait:
        print(_row("the same, partclone without its progress wait", rest[fast], None, rest["route"], rest[fast]))
    print(_row("`imaging-utility restore` (disk)", rest["ours"], None, rest["route"], rest[fast]))
    print(f"\nbackup output {sizes['ours'] / sizes['route'] * 100 - 100:+.2f}% vs the route "
          f"({sizes['ours']:,} vs {sizes['route']:,} bytes); peak RSS backup {backup['ours'].rss_mib:.0f} MiB, "
          f"restore {rest['ours'].rss_mib:.0f} MiB")
    for label, rs in (("backup", runs), ("restore", restore)):
        for k, v in rs.items():
            print(f"every {label} run, {k}: " + ", ".join(f"{r.wall:.2f} s ({r.cpu:.1f} s CPU)" for r in v))
    print(f"targets: backup ≥ 1.5× ({backup['route'].wall / backup['ours'].wall:.2f}× as shipped, "
          f"{backup[fast].wall / backup['ours'].wall:.2f}× without the wait), output within 3%, "
          f"restore ≥ 1.2× ({rest['route'].wall / rest['ours'].wall:.2f}× as shipped, "
          f"{rest[fast].wall / rest['ours'].wall:.2f}× without the wait), RSS ≤ 256 MiB")


def _median(runs: list[Run]) -> Run:
    return Run(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
               max(r.rss_mib for r in runs))


if __name__ == "__main__":
    started = time.monotonic()
    bench_backup(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/var/tmp/iu-bench"), 1)
    print(f"({time.monotonic() - started:.0f} s)")
