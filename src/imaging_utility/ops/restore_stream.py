"""Restore an image read front to back from a stream (``restore - TARGET``, e.g. from ``ssh host cat x.img``).

The seek table at the end of an image is not needed to restore it: the frames are read in order
(docs/image-format.md §1), each data frame's length found from its block headers (RFC 8878 §3.1.1),
decoded on a thread pool and its content checksum and size checked before its bytes are written, in
order.  At the end the trailer's CRC-32 of every frame and the seek table's sizes and checksums are
compared with the frames that came, and with ``verify`` the whole-image digests too.  Memory stays
at ``(2 × threads + 2)`` chunks whatever the stream claims.

Limits: a stream cannot be resumed; a cut stream leaves TARGET holding the chunks before the cut
(exit 8, naming how far it got).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from .. import interrupts
from .._io import drop_cached, pwrite_all
from ..errors import CorruptImageError, VerificationError
from ..extents import AllocationMap
from ..format import c_image as c
from ..format.codec import Codec, frame_checksum
from ..format.crc import crc32
from ..format.metaframe import Event, Header, Trailer
from ..format.schema import check_digests_agree
from ..image.digests import SUPPORTED, Digests
from ..image.layout import union
from ..limits import threads_within
from ..progress import ProgressCallback, ProgressEvent, no_progress
from ..storage.destlock import DestLock
from .restore import RestoreResult, open_target, target_kind
from .restore_writer import write_error

MAX_METADATA = 1 << 30  # a header with a huge allocation map stays far below this
_FHD_DID = (0, 1, 2, 4)
_FHD_FCS = (0, 2, 4, 8)


class _Stream:
    """Exact reads from a binary stream, counting the bytes read; the end of the stream is an error."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pos = 0

    def read(self, n: int, what: str) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            part = self.stream.read(min(n - got, 1 << 20))
            if not part:
                raise CorruptImageError(f"the image stream ends at byte {self.pos + got}, inside {what}: "
                                        "it was cut short (the target holds the chunks before it)")
            parts.append(part)
            got += len(part)
        self.pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def at_end(self) -> bool:
        return not self.stream.read(1)


def _zstd_frame(s: _Stream, magic: bytes, limit: int, what: str) -> bytes:
    """The rest of a zstd frame whose 4 magic bytes were read: header, blocks, checksum."""
    fhd = s.read(1, what)
    flags = fhd[0]
    single, reserved, checksum = (flags >> 5) & 1, (flags >> 3) & 1, (flags >> 2) & 1
    if reserved:
        raise CorruptImageError(f"{what}: reserved bit set in the frame header")
    head = s.read((0 if single else 1) + _FHD_DID[flags & 3] + (1 if single and flags >> 6 == 0 else
                                                                _FHD_FCS[flags >> 6]), what)
    out = bytearray(magic + fhd + head)
    while True:
        bh = s.read(3, what)
        out += bh
        h = int.from_bytes(bh, "little")
        last, btype, bsize = h & 1, (h >> 1) & 3, h >> 3
        if btype == 3:
            raise CorruptImageError(f"{what}: reserved block type")
        out += s.read(1 if btype == 1 else bsize, what)
        if len(out) > limit:
            raise CorruptImageError(f"{what}: frame longer than {limit} bytes, more than its chunk can need")
        if last:
            break
    if checksum:
        out += s.read(4, what)
    return bytes(out)


def _fileno(stream: BinaryIO) -> tuple[int, ...]:
    """The descriptor under ``stream`` (standard input redirected from a file may be the target)."""
    try:
        return (stream.fileno(),)
    except (OSError, ValueError, AttributeError):
        return ()


def restore_stream(stream: BinaryIO, target: str, *, force: bool = False, confirm: Callable[[], bool] | None = None,
                   threads: int | None = None, verify: bool = False,
                   progress: ProgressCallback = no_progress) -> RestoreResult:
    """Write the image arriving on ``stream`` to ``target`` (a file, sparse, or a confirmed block device)."""
    started = time.monotonic()
    threads = threads or os.cpu_count() or 2
    s = _Stream(stream)
    magic, size = c.SKIPPABLE_HEADER.unpack(s.read(8, "the header frame"))
    if magic != c.HEADER_MAGIC:
        raise CorruptImageError(f"the stream is not an imaging-utility image (first frame magic {magic:#010x})")
    if size > MAX_METADATA:
        raise CorruptImageError(f"the header frame claims {size} bytes")
    header = Header.decode(s.read(size, "the header frame"), 8)
    allocation = AllocationMap.decode(header.allocation, header.source_size) if header.allocation else None
    kind = target_kind(target)
    confirmed = kind == "device" and confirm is not None and confirm()
    with DestLock("restore target") as lock:
        fd = open_target(target, kind, header.source_size, force, confirmed, lock, inputs=_fileno(stream))
        try:
            return _restore(s, header, allocation, fd, target, kind == "device", threads, verify, progress, started)
        finally:
            os.close(fd)


def _restore(s: _Stream, header: Header, allocation: AllocationMap | None, fd: int, target: str, device: bool,
             threads: int, verify: bool, progress: ProgressCallback, started: float) -> RestoreResult:
    cs, size = header.chunk_size, header.source_size
    count = -(-size // cs)
    threads = threads_within(threads, cs)
    codec = Codec(int(header.meta.get("level", c.DEFAULT_LEVEL)))
    digests = Digests([n for n in header.meta.get("digests", []) if n in SUPPORTED] if verify else [])
    crcs: list[int] = []
    seen: list[tuple[int, int, int]] = [(s.pos, 0, c.XXH64_EMPTY_LOW32)]  # (csize, dsize, checksum) per frame
    bad: list[tuple[int, int]] = []
    trailer: Trailer | None = None
    ev = ProgressEvent("restore", 0, size)
    written = holes = 0
    last_event = -1
    pending: deque[tuple[int, Future[bytes] | None]] = deque()

    def take() -> None:
        nonlocal written, holes
        index, fut = pending.popleft()
        n = min(cs, size - index * cs)
        data = fut.result() if fut is not None else bytes(n)
        if verify:
            digests.update_chunk(data, index * cs, allocation)
        if fut is not None or device:
            try:
                pwrite_all(fd, data, index * cs)
            except OSError as e:
                raise write_error(e, target, index * cs) from None
            written += n
        else:
            holes += 1
        ev.done += n
        ev.output_bytes = written
        progress(ev)

    # signals are taken between chunks (interrupts.py), never inside a lock the workers share
    with interrupts.deferred(), ThreadPoolExecutor(threads, thread_name_prefix="restore") as pool:
        while True:
            interrupts.check()
            start = s.pos
            raw = s.read(4, f"frame {len(seen)}")
            magic = int.from_bytes(raw, "little")
            if magic == c.ZSTD_MAGIC:
                index = len(crcs)
                if index >= count:
                    raise CorruptImageError(f"the stream holds more than the {count} chunks its header says")
                n = min(cs, size - index * cs)
                frame = _zstd_frame(s, raw, n + (n >> 7) + (1 << 16), f"chunk {index}")
                crcs.append(crc32(frame))
                seen.append((len(frame), n, frame_checksum(frame)))
                hole = frame == codec.zero_frame(n)
                pending.append((index, None if hole else pool.submit(codec.decompress, frame, n, index, index * cs)))
                if len(pending) > 2 * threads + 2:
                    take()
                continue
            if magic & c.SKIPPABLE_MASK != c.SKIPPABLE_BASE:
                raise CorruptImageError(f"the stream holds an unknown frame (magic {magic:#010x}) at byte {start}")
            (length,) = c.CRC.unpack(s.read(4, f"frame {len(seen)}"))
            if length > MAX_METADATA or (magic == c.SEEK_TABLE_MAGIC and length != 12 * len(seen) + 9):
                raise CorruptImageError(f"the metadata frame at byte {start} claims {length} bytes")
            body = s.read(length, f"the metadata frame at byte {start}")
            if magic == c.SEEK_TABLE_MAGIC:
                _check_table(body, seen)
                break
            seen.append((8 + length, 0, c.XXH64_EMPTY_LOW32))
            if magic == c.EVENT_MAGIC:  # spec §3.2: right after its chunk's data frame, one per chunk
                event, what = Event.decode(body, start + 8), f"the event frame at byte {start}"
                if event.chunk_index != len(crcs) - 1 or event.chunk_index == last_event:
                    raise CorruptImageError(f"{what} names chunk {event.chunk_index}, but follows the data "
                                            f"frame of chunk {len(crcs) - 1}")
                event.check_chunk(cs, size, what)
                last_event = event.chunk_index
                bad += event.bad_ranges
            elif magic == c.TRAILER_MAGIC:
                trailer = Trailer.decode(body, start + 8)
        while pending:
            take()
    _check_end(s, header, trailer, crcs, count)
    assert trailer is not None
    if union(bad) != union(trailer.bad_ranges):
        raise CorruptImageError(f"the trailer lists {len(trailer.bad_ranges)} unreadable ranges, the event frames "
                                f"{len(bad)} that differ from them: an event frame is missing or damaged")
    if not device:
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            raise write_error(e, target, size) from None
    else:
        try:
            os.fsync(fd)
        except OSError as e:
            raise write_error(e, target, size) from None
        drop_cached(fd)
    result = RestoreResult(target, device, size, written, holes, time.monotonic() - started, bad_ranges=sorted(bad))
    if verify:
        assert trailer is not None
        expected = trailer.meta.get("digests", {})
        actual = digests.hexdigests()
        result.digests = {n: {"expected": expected.get(n), "actual": actual[n], "ok": actual[n] == expected.get(n)}
                          for n in actual}
        wrong = [n for n, d in result.digests.items() if not d["ok"]]
        if wrong:
            raise VerificationError(f"restored data does not match the image's {', '.join(wrong)} digest")
    return result


def _check_table(body: bytes, seen: list[tuple[int, int, int]]) -> None:
    """The seek table must list exactly the frames that came (itself excluded)."""
    entries = list(c.SEEK_ENTRY.iter_unpack(body[: 12 * len(seen)]))
    n, descriptor, footer = c.SEEK_FOOTER.unpack(body[12 * len(seen) :])
    if footer != c.SEEKABLE_FOOTER_MAGIC or descriptor != c.SEEK_DESCRIPTOR_CHECKSUM or n != len(seen):
        raise CorruptImageError("the seek table at the end of the stream is damaged")
    for i, (want, got) in enumerate(zip(entries, seen, strict=True)):
        if want != got:
            raise CorruptImageError(f"the seek table disagrees with frame {i} of the stream "
                                    f"(size/length/checksum {want} against {got})")


def _check_end(s: _Stream, header: Header, trailer: Trailer | None, crcs: list[int], count: int) -> None:
    if trailer is None:
        raise CorruptImageError("the stream has no trailer frame")
    if len(crcs) != count or trailer.chunk_count != count or trailer.source_size != header.source_size:
        raise CorruptImageError(f"the stream holds {len(crcs)} chunks; the image has {count}")
    check_digests_agree(header.meta, trailer.meta, header.used_only)
    stored = list(c.CRC.iter_unpack(trailer.frame_crcs or b""))
    bad = next((i for i, (want, got) in enumerate(zip(stored, crcs, strict=False)) if want[0] != got), None)
    if len(stored) != count or bad is not None:
        raise CorruptImageError(f"data frame {bad} of the stream fails the trailer's CRC-32 check")
    if not s.at_end():
        raise CorruptImageError(f"the stream goes on after the seek table (byte {s.pos})")
