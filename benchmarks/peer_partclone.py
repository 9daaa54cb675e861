"""partclone as the peer, with and without its progress wait.

partclone's progress thread sleeps ``--UI-fresh`` seconds (2 by default) between updates, and partclone
joins it before it exits: every run ends on the next multiple of that interval after its last byte, so a
pipeline ``partclone -c | zstd`` finishes up to 2 s after its data did (zstd waits for the end of its input).
That is what a user of partclone waits for, once per partition, but on a benchmark of a few seconds it is
a large, random share of the peer's time (identical runs take 4.7 s or 6.7 s).  ``nowait_env`` builds a
preload that shortens that sleep to 20 ms, so partclone exits within 20 ms of its data; its output is
byte-identical.  The benchmarks report the peer both ways and hold the targets to the faster one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_SHIM = r"""
#include <time.h>
/* partclone's progress thread: "while (!done) sleep(fresh)"; joined before exit */
unsigned int sleep(unsigned int seconds) {
    struct timespec t = {0, 20 * 1000 * 1000};
    (void)seconds;
    nanosleep(&t, 0);
    return 0;
}
"""


def nowait_env(work: Path) -> str | None:
    """``LD_PRELOAD=…`` for a shell command running partclone without its progress wait, or None (no
    C compiler here: the benchmarks then report partclone as shipped only, and say so)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    src, lib = work / "partclone-nowait.c", work / "partclone-nowait.so"
    src.write_text(_SHIM)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return f"LD_PRELOAD={lib}"
