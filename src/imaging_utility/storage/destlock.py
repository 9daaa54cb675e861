"""Exclusive locks on the files one run writes: an image's file or every part, a restore target.

Two runs on one DEST at once would interleave their frames (or their writes) and both report
success.  Each file a run writes is locked with ``flock(LOCK_EX | LOCK_NB)`` on a descriptor of its
own (a duplicate, so the lock outlives the writer closing a finished part) and kept until
``release``.  A second run finds the lock held and stops before touching anything, naming the
holder from ``/proc/locks`` (pid and command line) when it can.  The kernel drops the locks when
the holder dies, so a killed run leaves nothing stale behind.  Not thread-safe.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import RefusedError

PROC_LOCKS = "/proc/locks"


class DestLock:
    def __init__(self, what: str = "image") -> None:
        self.what = what
        self._held: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> our locked descriptor

    def add_path(self, path: str) -> None:
        """Lock the existing file ``path`` (a file that cannot be opened is left to the writer to report)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return
        try:
            self.add_fd(fd, path)
        finally:
            os.close(fd)

    def add_fd(self, fd: int, path: str) -> None:
        """Lock the file open on ``fd`` (no-op when this lock already holds that file)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self._held:
            return
        mine = os.dup(fd)
        try:
            fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(mine)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = lock_holder(st.st_dev, st.st_ino)
                raise RefusedError(
                    f"{path} is in use by another run ({holder or 'holder unknown'}); "
                    f"wait for it to finish or stop it, then try again"
                ) from None
            return  # a filesystem without flock (ENOLCK, EINVAL): nothing to hold
        self._held[key] = mine

    def release(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def __enter__(self) -> DestLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(dev: int, ino: int) -> str | None:
    """``pid N: COMMAND`` of the process holding a lock on file (dev, ino) per ``/proc/locks``."""
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    try:
        with open(PROC_LOCKS) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" ("->" marks a waiter: one more field)
        if "->" in fields:
            continue
        if len(fields) >= 6 and fields[5] == want and fields[4].isdigit():
            pid = int(fields[4])
            return f"pid {pid}: {_command(pid)}" if pid > 0 else None
    return None


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(4096)
    except OSError:
        return "command unknown"
    text = " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= 160 else text[:157] + "..."
