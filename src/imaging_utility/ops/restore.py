"""Restore an image to a file (sparse: zero and unallocated chunks become holes) or a block device.

Chunks are decoded on a thread pool and written in order with ``pwrite``;
every chunk's checksums are checked as it is decoded.  A device gets every
stored byte (``restore_writer``: stored zeros by ``BLKZEROOUT``, free space of a used-only image only
when asked) and is fsynced at the end.  Whole disks and single partitions of one have their own
modules (``restore_disk``, ``restore_partition``).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import interrupts
from .._io import drop_cached, pwrite_all
from ..devices.source import block_device_size
from ..devices.throttle import Throttle
from ..errors import (
    ChunkCorruptError,
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
    UsageError,
    VerificationError,
)
from ..image.digests import SUPPORTED, Digests
from ..image.reader import ImageReader
from ..limits import threads_within
from ..progress import (
    COMPRESSION,
    RATE_LIMIT,
    TARGET,
    JobControl,
    ProgressCallback,
    ProgressEvent,
    StageClock,
    no_progress,
)
from ..storage.destcheck import file_key, refuse_new_in_dev
from ..storage.destlock import DestLock, lock_holder
from .restore_writer import FREE_SKIP, CorruptChunk, write_error, write_stored


@dataclass
class RestoreResult:
    target: str
    is_device: bool
    bytes_total: int
    bytes_written: int
    holes: int
    elapsed: float
    digests: dict[str, dict[str, object]] = field(default_factory=dict)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)
    corrupt: list[CorruptChunk] = field(default_factory=list)  # zero-filled (continue_on_error)


def target_kind(target: str) -> str:
    """"device", "file" (existing regular file) or "new"."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        refuse_new_in_dev(target)
        return "new"
    except PermissionError:
        raise PermissionDeniedError(f"permission denied: {target}") from None
    if stat.S_ISBLK(st.st_mode):
        return "device"
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"restore target {target} is a directory; give a file name or a block device")
    if stat.S_ISREG(st.st_mode):
        return "file"
    raise UsageError(f"restore target {target} is neither a regular file nor a block device")


def open_target(target: str, kind: str, size: int, force: bool, confirmed: bool, lock: DestLock, *,
                unconfirmed: str = "every byte of ", too_small: str = "the image needs {size}; choose a larger device",
                inputs: Sequence[str | int] = ()) -> int:
    """Open (and lock) the restore target for writing: a device only if ``confirmed`` and at least ``size``
    bytes, a file only with ``force`` when it exists (then emptied), never one of ``inputs`` (the image's
    files, or the descriptor it streams from), by any name.  ``unconfirmed`` and ``too_small`` word the
    refusals for what is being restored (``too_small`` may use ``{size}``)."""
    if kind == "file" and not force:
        raise RefusedError(f"{target} already exists; use --force to overwrite it")
    if kind == "device" and not confirmed:
        raise RefusedError(f"not confirmed: restoring would overwrite {unconfirmed}{target}")
    try:
        if kind == "device":
            fd = os.open(target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
            try:
                lock.add_fd(fd, target)
                dev_size = block_device_size(fd)
            except BaseException:
                os.close(fd)
                raise
            if dev_size < size:
                os.close(fd)
                raise RefusedError(f"{target} holds {dev_size} bytes, {too_small.format(size=size)}")
            return fd
        # not O_TRUNC: another restore may be writing this file; lock it first, then empty it
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _refuse_input(fd, target, inputs)
            lock.add_fd(fd, target)
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd
    except OSError as e:
        if e.errno == errno.EBUSY:
            holder = _device_holder(target)
            raise RefusedError(f"{target} is busy (mounted or in use{': ' + holder if holder else ''}); "
                               "unmount it or stop that process first") from None
        if e.errno == errno.ENOENT:
            raise NotFoundError(f"cannot create {target}: directory does not exist") from None
        raise write_error(e, target, 0) from None


def _refuse_input(fd: int, target: str, inputs: Sequence[str | int]) -> None:
    """``RefusedError`` when the file open on ``fd`` is one of ``inputs`` (paths or descriptors)."""
    mine = file_key(fd)
    if mine is not None and mine in {file_key(what) for what in inputs}:
        raise RefusedError(f"{target} is the image being restored; restore it to another file or a device")


def _device_holder(target: str) -> str | None:
    try:
        st = os.stat(target)
    except OSError:
        return None
    return lock_holder(st.st_dev, st.st_ino)


def restore(reader: ImageReader, target: str, *, force: bool = False,
            confirm: Callable[[], bool] | None = None, threads: int | None = None, verify: bool = False,
            progress: ProgressCallback = no_progress, continue_on_error: bool = False, free: str = FREE_SKIP,
            throttle: Throttle | None = None, control: JobControl | None = None) -> RestoreResult:
    """Write the image's bytes to ``target``; a block device is written only if ``confirm()`` says yes.

    ``continue_on_error``: a corrupt chunk is zero-filled and listed in ``RestoreResult.corrupt`` instead
    of stopping the restore (exit 8); ``verify`` is then skipped for the digests it cannot match.
    ``control`` pauses between chunks (every chunk before it written) or cancels (``Interrupted``;
    the target is then incomplete)."""
    started = time.monotonic()
    threads = threads or os.cpu_count() or 2
    kind = target_kind(target)
    confirmed = kind == "device" and confirm is not None and confirm()
    with DestLock("restore target") as lock:
        fd = open_target(target, kind, reader.size, force, confirmed, lock, inputs=reader.paths)
        if kind == "device":
            return _restore_device(reader, fd, target, threads, verify, progress, continue_on_error, free,
                                   throttle, started, control)
        return _restore_file(reader, target, fd, threads, verify, progress, continue_on_error, throttle, started,
                             control)


def _restore_file(reader: ImageReader, target: str, fd: int, threads: int, verify: bool,
                  progress: ProgressCallback, continue_on_error: bool, throttle: Throttle | None,
                  started: float, control: JobControl | None) -> RestoreResult:
    corrupt: list[CorruptChunk] = []
    expected = dict(reader.trailer.meta.get("digests", {}))
    digests = Digests([n for n in expected if n in SUPPORTED] if verify else [])
    threads = threads_within(threads, reader.chunk_size)
    window = 2 * threads + 2
    ev = ProgressEvent("restore", 0, reader.size, chunk_size=reader.chunk_size, max_workers=threads,
                       max_depth=window + 1)
    clock = StageClock()
    zeros = {n: bytes(n) for n in {reader.chunk_size, reader.chunk_len(reader.chunk_count - 1)}}
    written = holes = 0
    try:
        # signals are taken between chunks (interrupts.py), never inside a lock the workers share
        with interrupts.deferred(), ThreadPoolExecutor(threads, thread_name_prefix="restore") as pool:
            pending: deque[tuple[int, Future[bytes] | None]] = deque()

            def take() -> None:
                nonlocal written, holes
                index, fut = pending.popleft()
                offset = index * reader.chunk_size
                n = reader.chunk_len(index)
                if fut is None:
                    data = zeros[n]
                else:
                    t0 = clock.now()
                    try:
                        data = fut.result()
                    except ChunkCorruptError as e:
                        if not continue_on_error:
                            raise
                        # left as a hole, i.e. zeros: the file was created or truncated
                        corrupt.append(CorruptChunk(index, offset, n, str(e)))
                        ev.done += n
                        progress(ev)
                        return
                    clock.add(COMPRESSION, clock.now() - t0)
                if verify:
                    digests.update_chunk(data, offset, reader.allocation)
                if fut is None or data == zeros[n]:
                    holes += 1  # the file was emptied: a hole reads back as these zeros
                else:
                    if throttle is not None:
                        t0 = clock.now()
                        throttle.consume(n)
                        clock.add(RATE_LIMIT, clock.now() - t0)
                    t0 = clock.now()
                    try:
                        pwrite_all(fd, data, offset)
                    except OSError as e:
                        raise write_error(e, target, offset) from None
                    clock.add(TARGET, clock.now() - t0)
                    written += n
                ev.done += n
                ev.output_bytes = written
                ev.depth = len(pending)
                clock.fill(ev)
                progress(ev)

            # a zero frame becomes a hole only after its bytes compared equal to the zero frame (spec §2.1;
            # a 46-byte read per MiB); a damaged one is decoded, and fails
            for index in range(reader.chunk_count):
                interrupts.check()
                if control is not None and control.stop_requested:
                    while pending:
                        take()
                    control.checkpoint(ev, progress, f"restore cancelled at byte {ev.done} of {reader.size}; "
                                       f"{target} is incomplete")
                    clock.restart()
                hole = reader.zero_chunk_checked(index)
                pending.append((index, None if hole else pool.submit(reader.decode_chunk, index)))
                if len(pending) > window:
                    take()
            while pending:
                take()
        try:  # trailing zero chunks were holes: give the file its full size
            os.ftruncate(fd, reader.size)
        except OSError as e:
            raise write_error(e, target, reader.size) from None
        # a file is left to the page cache, like cp; a device is fsynced (_restore_device)
    finally:
        os.close(fd)
    result = RestoreResult(target, False, reader.size, written, holes, time.monotonic() - started,
                           bad_ranges=list(reader.bad_ranges), corrupt=corrupt)
    if verify and not corrupt:
        actual = digests.hexdigests()
        result.digests = {n: {"expected": expected[n], "actual": actual[n], "ok": actual[n] == expected[n]}
                          for n in actual}
        bad = [n for n, d in result.digests.items() if not d["ok"]]
        if bad:
            raise VerificationError(f"restored data does not match the image's {', '.join(bad)} digest")
    return result


def _restore_device(reader: ImageReader, fd: int, target: str, threads: int, verify: bool,
                    progress: ProgressCallback, continue_on_error: bool, free: str, throttle: Throttle | None,
                    started: float, control: JobControl | None) -> RestoreResult:
    try:
        report = write_stored(reader, fd, target, start=0, length=reader.size, device=True, free=free,
                              continue_on_error=continue_on_error, threads=threads, throttle=throttle,
                              progress=progress, control=control)
        try:  # a device must be durable before we say so
            os.fsync(fd)
        except OSError as e:
            raise write_error(e, target, reader.size) from None
        drop_cached(fd)  # on the disk now: out of the page cache (restore_writer.WriteBehind)
    finally:
        os.close(fd)
    holes = sum(1 for i in range(reader.chunk_count) if reader.zero_chunk_checked(i))
    result = RestoreResult(target, True, reader.size, report.bytes_written, holes, time.monotonic() - started,
                           bad_ranges=list(reader.bad_ranges), corrupt=report.corrupt)
    if verify and not report.corrupt:
        from .restore_check import verify_written

        verify_written(reader, target, True, [(0, 0, reader.size)])
        result.digests = {"bytes": {"expected": "image", "actual": "read back", "ok": True}}
    return result
