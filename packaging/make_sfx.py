"""The single-file executable: ``packaging/sfx-stub.sh`` followed by the one-folder build's .tar.gz.

    python packaging/make_sfx.py FOLDER.tar.gz OUT --version V --arch A

PyInstaller's own one-file mode unpacks the whole program into a new temporary directory on every run
and removes it at the end (about 0.3 s of CPU per start on the project's VM, three times the folder
build's start-up); the stub unpacks it once into a private cache directory instead (see the stub).
Deterministic: the output depends only on the tarball (itself reproducible) and the arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import tarfile
from pathlib import Path

STUB = Path(__file__).with_name("sfx-stub.sh")


def make_sfx(tarball: Path, out: Path, version: str, arch: str) -> None:
    payload = tarball.read_bytes()
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    tops = {m.name.split("/", 1)[0] for m in members}
    if len(tops) != 1 or not any(m.name == f"{next(iter(tops))}/imaging-utility" for m in members):
        raise SystemExit(f"make_sfx: {tarball} is not one folder holding imaging-utility")
    unpacked = sum(m.size for m in members) / (1 << 20)
    ident = f"{version}-{hashlib.sha256(payload).hexdigest()[:16]}"
    text = STUB.read_text()
    for key, value in (("VERSION", version), ("ARCH", arch), ("UNPACKED_MIB", f"{unpacked:.0f}"), ("ID", ident),
                       ("TOP", next(iter(tops)))):
        text = text.replace(f"@{key}@", value)
    skip = 0
    while True:  # the offset is written into the stub, whose length depends on it
        stub = text.replace("@SKIP@", str(skip + 1)).encode()
        if len(stub) == skip:
            break
        skip = len(stub)
    if re.search(rb"@[A-Z_]+@", stub):
        raise SystemExit("make_sfx: a placeholder of the stub was left unfilled")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(stub + payload)
    os.chmod(tmp, 0o755)
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tarball", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--version", required=True)
    ap.add_argument("--arch", required=True)
    args = ap.parse_args()
    make_sfx(args.tarball, args.out, args.version, args.arch)


if __name__ == "__main__":
    main()
