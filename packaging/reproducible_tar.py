#!/usr/bin/env python3
"""Write a .tar.gz whose bytes depend only on the files' contents, names and modes.

    reproducible_tar.py OUT.tar.gz DIR [ARCNAME]     pack DIR (as ARCNAME/, default its name)
    reproducible_tar.py --normalize FILE.tar.gz      rewrite an existing archive in place (the sdist)

Entries sorted by name; mtime = SOURCE_DATE_EPOCH (default 0); owner root:root, numeric; modes kept
but group/other write bits dropped; gzip header without a name or time.  setuptools' sdist carries the
checkout's file times and the build time, so two builds differ without this.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import tarfile
from pathlib import Path

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    info.pax_headers = {}
    return info


def _write(out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(members, key=lambda m: m[0].name):
            tar.addfile(_clean(info), io.BytesIO(data) if data is not None else None)
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())


def pack(out: Path, directory: Path, arcname: str) -> None:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(fileobj=io.BytesIO(), mode="w") as scratch:
        for path in [directory, *sorted(directory.rglob("*"))]:
            name = arcname if path == directory else f"{arcname}/{path.relative_to(directory).as_posix()}"
            info = scratch.gettarinfo(str(path), arcname=name)
            members.append((info, path.read_bytes() if info.isreg() else None))
    _write(out, members)


def normalize(archive: Path) -> None:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isreg() else None
            members.append((info, f.read() if f else None))
    _write(archive, members)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--normalize":
        normalize(Path(args[1]))
    elif len(args) in (2, 3):
        d = Path(args[1])
        pack(Path(args[0]), d, args[2] if len(args) == 3 else d.name)
    else:
        raise SystemExit(__doc__)
