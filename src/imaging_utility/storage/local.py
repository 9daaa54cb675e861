"""Local storage: an image as one file or a set of split parts ``NAME.001``, ``NAME.002``, … seen as one
byte stream (the ``base`` protocol for files).

Parts are cut on frame boundaries (a frame never straddles two parts), so
``cat NAME.0* | zstd -dc`` works.  ``PartReader`` is thread-safe (positional
reads only); ``PartWriter`` is not, and is sticky: after its first I/O error
every call raises the same error.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import re
import stat
import sys
import threading
from pathlib import Path

from .._io import PIECE, drop_cached
from ..errors import (
    CorruptImageError,
    Error,
    NoSpaceError,
    NotFoundError,
    PermissionDeniedError,
    TargetIOError,
    UnsupportedError,
    UsageError,
    target_error,
)
from .destlock import DestLock

MAX_PARTS = 999
STDOUT = "-"  # DEST that streams the image to standard output
_PART_RE = re.compile(r"^(.*)\.(\d{3})$")


def part_path(base: str, index: int) -> str:
    """Path of part ``index`` (0-based) of the split image named ``base``."""
    return f"{base}.{index + 1:03d}"


def resolve_parts(path: str) -> list[str]:
    """The file(s) making up the image at ``path``: the file itself, or ``path.001``… / siblings of ``X.001``."""
    base = None
    m = _PART_RE.match(path)
    if m and m.group(2) == "001" and os.path.isfile(path):
        base = m.group(1)
    elif not os.path.exists(path) and os.path.isfile(part_path(path, 0)):
        base = path
    if base is None:
        if os.path.isdir(path):
            raise UsageError(f"{path} is a directory, not an image")
        if not os.path.exists(path):
            raise NotFoundError(f"image not found: {path}")
        return [path]
    parts: list[str] = []
    while os.path.isfile(part_path(base, len(parts))):
        parts.append(part_path(base, len(parts)))
    later = _numbers_after(base, len(parts))
    if later:
        raise CorruptImageError(f"image part {part_path(base, len(parts))} is missing ({part_path(base, later[0] - 1)} "
                                "exists): the split image needs every part; put the missing one back next to the "
                                "others")
    return parts


def _numbers_after(base: str, count: int) -> list[int]:
    """Part numbers above ``count`` present for ``base``: parts after a gap."""
    folder, name = os.path.split(base)
    pattern = re.compile(re.escape(name) + r"\.(\d{3})")
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return sorted(n for n in (int(m.group(1)) for m in map(pattern.fullmatch, names) if m) if n > count)


def next_part_name(paths: list[str]) -> str | None:
    """For a split image read from ``paths``, the name of the part after the last one; else None."""
    first = _PART_RE.match(paths[0]) if paths else None
    last = _PART_RE.match(paths[-1]) if paths else None
    if first is None or last is None or first.group(2) != "001" or int(last.group(2)) >= MAX_PARTS:
        return None
    return part_path(last.group(1), int(last.group(2)))


def existing_outputs(dest: str) -> list[str]:
    """Files an image written to ``dest`` may already have left behind (single file and/or parts)."""
    found = [dest] if os.path.lexists(dest) else []
    i = 0
    while os.path.lexists(part_path(dest, i)):
        found.append(part_path(dest, i))
        i += 1
    return found


def _os_error(e: OSError, path: str, what: str) -> Error:
    if path == STDOUT:
        why = "the reader went away (broken pipe)" if e.errno == errno.EPIPE else e.strerror
        return TargetIOError(f"writing the image to standard output failed while {what}: {why}")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left on the filesystem of {path} while {what}; "
                            "free some space and continue with --resume")
    if e.errno == errno.EFBIG:
        return NoSpaceError(f"{path} reached the largest file size allowed while {what}; "
                            "use --split-size, or free space/raise the limit and continue with --resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"cannot write {path}: {e.strerror}")
    if e.errno == errno.ENOENT:
        return NotFoundError(f"cannot create {path}: directory does not exist")
    return TargetIOError(f"I/O error on {path} while {what}: {e.strerror}")


class PartReader:
    def __init__(self, paths: list[str]) -> None:
        if not paths:
            raise NotFoundError("no image parts given")
        self.paths = paths
        self.fds: list[int] = []
        self.starts: list[int] = []
        total = 0
        try:
            for p in paths:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the open
                self.fds.append(fd)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe"
                            if stat.S_ISFIFO(st.st_mode) else "not a regular file")
                    raise UnsupportedError(f"image {p} is {kind}; an image is read from a file "
                                           "(a stream: restore - < PIPE)")
                self.starts.append(total)
                total += st.st_size
        except UnsupportedError:
            self.close()
            raise
        except PermissionError:
            self.close()
            raise PermissionDeniedError(f"permission denied reading image {p}") from None
        except OSError as e:
            self.close()
            raise NotFoundError(f"cannot open image {p}: {e.strerror}") from None
        self.size = total

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` of the joined stream; raises CorruptImageError past its end."""
        if offset < 0 or n < 0 or offset + n > self.size:
            raise CorruptImageError(
                f"image read [{offset}, {offset + n}) beyond its end ({self.size} bytes): truncated image?"
            )
        pieces: list[bytes] = []
        i = bisect.bisect_right(self.starts, offset) - 1
        while n > 0:
            rel = offset - self.starts[i]
            end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
            take = min(n, end - offset)
            try:
                data = os.pread(self.fds[i], take, rel)
            except OSError as e:
                raise TargetIOError(f"I/O error reading image {self.paths[i]} at {rel}: {e.strerror}") from None
            if len(data) != take:
                raise CorruptImageError(f"image part {self.paths[i]} shrank while being read")
            pieces.append(data)
            offset += take
            n -= take
            i += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def locate(self, offset: int) -> tuple[str, int]:
        """(part path, offset in that part) of ``offset`` of the joined stream."""
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        return self.paths[i], offset - self.starts[i]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class _Flusher:
    """Background ``fdatasync`` of the part being written, requested every ``FLUSH_EVERY`` bytes.

    Keeps the durable prefix of an interrupted image close to what was written (power loss) and
    leaves little for the final fsync, without stalling the writing thread.  What is on the disk then
    leaves the page cache (``drop_cached``).  The writer waits for it to go idle before closing or
    switching the file descriptor.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._fd = -1
        self._pending = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None

    def request(self, fd: int) -> None:
        with self._cv:
            self._fd, self._pending = fd, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fdatasync", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_idle(self) -> None:
        with self._cv:
            while self._pending or self._busy:
                self._cv.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                fd, self._pending, self._busy = self._fd, False, True
            try:
                os.fdatasync(fd)
                drop_cached(fd)
            except OSError as e:
                self.error = e
            with self._cv:
                self._busy = False
                self._cv.notify_all()


FLUSH_EVERY = 32 << 20


class PartWriter:
    """Appends whole frames; starts a new part when a frame would not fit in ``split_size``.

    With a ``lock``, every part is locked before a byte of it changes (``DestLock``): a part held by
    another run raises ``RefusedError`` with nothing written."""

    def __init__(self, dest: str, split_size: int | None, lock: DestLock | None = None) -> None:
        self.dest = dest
        self.split_size = split_size
        self.lock = lock
        self.fd = -1
        self.part_index = -1
        self.part_len = 0
        self.total = 0
        self._error: Error | None = None
        self._flusher = _Flusher()
        self._next_flush = FLUSH_EVERY

    def _path(self, index: int) -> str:
        return self.dest if self.split_size is None else part_path(self.dest, index)

    @property
    def streaming(self) -> bool:
        """Writing to standard output (``-``): a pipe, never synced, split or resumed."""
        return self.dest == STDOUT

    def _open(self, index: int, truncate_to: int | None = None) -> None:
        if self.fd >= 0:
            self.sync()  # a finished part is on the disk before the next one starts, like the last one
            os.close(self.fd)
            self.fd = -1
        path = self._path(index)
        if self.streaming:
            self.fd, self.part_len, self.part_index = os.dup(sys.stdout.fileno()), 0, index
            return
        try:
            # never O_TRUNC: the part is locked first, then cut
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if truncate_to is None else 0), 0o644)
            if self.lock is not None:
                self.lock.add_fd(self.fd, path)
            self.part_len = truncate_to or 0
            os.ftruncate(self.fd, self.part_len)
        except OSError as e:
            raise _os_error(e, path, "opening it") from None
        os.lseek(self.fd, self.part_len, os.SEEK_SET)
        self.part_index = index

    def create(self, header_frame: bytes | None = None) -> None:
        self._open(0)
        if header_frame is not None:
            self.write_frame(header_frame)

    def reopen_at(self, total: int, part_sizes: list[int]) -> None:
        """Continue after the first ``total`` bytes of the existing parts (sizes ``part_sizes``)."""
        acc = 0
        for i, size in enumerate(part_sizes):
            if total <= acc + size:
                self._open(i, total - acc)
                for j in range(i + 1, len(part_sizes)):
                    os.unlink(self._path(j))
                self.total = total
                return
            acc += size
        raise CorruptImageError(f"cannot continue at byte {total}: the image parts hold only {acc} bytes")

    def write_frame(self, frame: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self.split_size is not None and self.part_len and self.part_len + len(frame) > self.split_size:
            if self.part_index + 1 >= MAX_PARTS:
                self._error = UsageError(f"more than {MAX_PARTS} parts needed; choose a larger --split-size")
                raise self._error
            self._open(self.part_index + 1)
        view = memoryview(frame)
        try:
            while view:
                n = os.write(self.fd, view[:PIECE])
                view = view[n:]
                self.part_len += n
                self.total += n
        except OSError as e:
            self._error = _os_error(e, self._path(self.part_index), f"writing at byte {self.total}")
            raise self._error from None
        if self._flusher.error is not None:
            self._error = _os_error(self._flusher.error, self._path(self.part_index), "flushing it to disk")
            raise self._error
        if self.total >= self._next_flush and not self.streaming:
            self._next_flush = self.total + FLUSH_EVERY
            self._flusher.request(self.fd)

    def sync(self) -> None:
        if self.fd >= 0 and not self.streaming:
            self._flusher.wait_idle()
            try:
                os.fsync(self.fd)
            except OSError as e:
                raise _os_error(e, self._path(self.part_index), "flushing it to disk") from None
            drop_cached(self.fd)

    def finish(self) -> list[str]:
        self.sync()
        self.close()
        return self.paths()

    def close(self) -> None:
        if self.fd >= 0:
            self._flusher.wait_idle()
            os.close(self.fd)
            self.fd = -1

    def paths(self) -> list[str]:
        return [self._path(i) for i in range(self.part_index + 1)]

    @staticmethod
    def sizes(paths: list[str]) -> list[int]:
        return [Path(p).stat().st_size for p in paths]


HEADER_PROBE = 8  # a skippable frame's magic and size


def first_frame(reader: PartReader) -> bytes:
    """The first frame's bytes as far as they were written (up to the size its first 8 bytes declare)."""
    head = reader.read_at(0, min(HEADER_PROBE, reader.size))
    if len(head) < HEADER_PROBE:
        return head
    return reader.read_at(0, min(reader.size, HEADER_PROBE + int.from_bytes(head[4:8], "little")))


class LocalPartial:
    """The file(s) an interrupted image left at ``dest``: readable, so a resume keeps a checked prefix."""

    def __init__(self, dest: str, split_size: int | None, lock: DestLock | None = None) -> None:
        self.dest, self.split_size, self.lock = dest, split_size, lock
        paths = [p for p in existing_outputs(dest) if split_size is None or p != dest]
        self.reader: PartReader | None = PartReader(paths) if paths else None
        self.head = first_frame(self.reader) if self.reader is not None else b""
        self.name = paths[0] if paths else dest

    def continue_at(self, kept: int) -> PartWriter:
        assert self.reader is not None
        parts = PartWriter(self.dest, self.split_size, self.lock)
        parts.reopen_at(kept, PartWriter.sizes(self.reader.paths))
        return parts

    def replay(self) -> PartWriter:
        raise AssertionError("local partial images are read back, not replayed")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def remove_outputs(dest: str) -> threading.Thread | None:
    """Remove an old image at ``dest`` (``--force``).  The files are renamed out of the way at once and
    unlinked on a background thread (freeing a large file's blocks takes a while); join the thread."""
    doomed: list[tuple[str, str]] = []
    for i, p in enumerate(existing_outputs(dest)):
        tmp = os.path.join(os.path.dirname(p) or ".", f".{os.path.basename(dest)}.{os.getpid()}.{i}.discard")
        try:
            os.rename(p, tmp)
        except OSError as e:
            for old, moved in reversed(doomed):  # put back what was moved: all of the old image, or nothing
                with contextlib.suppress(OSError):
                    os.rename(moved, old)
            raise target_error(e, f"replace {p}") from None
        doomed.append((p, tmp))
    if not doomed:
        return None

    def unlink_all() -> None:
        for _old, moved in doomed:
            with contextlib.suppress(OSError):
                _unlink_and_free(moved)

    thread = threading.Thread(target=unlink_all, name="discard-old-image", daemon=True)
    thread.start()
    return thread


def _unlink_and_free(path: str) -> None:
    """Unlink ``path`` and free its blocks now.  The run's ``DestLock`` holds the old file open (its lock
    must outlive the rename), so an unlink alone would free the blocks only when the run ends, on its
    critical path; truncating through a descriptor of our own frees them here, in the background.  Only
    a regular file (never a link's target: ``O_NOFOLLOW``) that no other name still reaches is truncated."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        os.unlink(path)
        return
    try:
        os.unlink(path)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 0:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
