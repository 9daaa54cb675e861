"""Shared pieces of the fuzz harnesses (see fuzz/README.md).

A harness's ``TestOneInput`` lets through only what the code under test does not promise: the
project's own ``errors.Error`` subclasses are the documented way to fail, anything else is a crash.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from imaging_utility.blocks import check_range
from imaging_utility.extents import Extent, ExtentKind

FUZZ = Path(__file__).resolve().parent
BASES = FUZZ / "bases"
ROOT = FUZZ.parent


@functools.cache
def base_image(name: str) -> bytes:
    """A small real volume or image kept compressed in ``fuzz/bases`` (built by ``make_seeds.py``)."""
    return zstandard.ZstdDecompressor().decompress((BASES / f"{name}.zst").read_bytes(), max_output_size=64 << 20)


class PatchedSource:
    """A ``BlockSource``: ``base`` bytes cut or zero-extended to ``size``, with ``patches`` laid over them."""

    def __init__(self, base: bytes, size: int, patches: list[tuple[int, bytes]], sector_size: int = 512) -> None:
        self._base = memoryview(base)
        self._size = size
        self._patches = [(o, p) for o, p in patches if o < size]
        self._sector_size = sector_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self._sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self._size, offset, len(buf))
        view = memoryview(buf).cast("B")
        end = offset + len(view)
        have = max(0, min(end, len(self._base)) - offset)
        view[:have] = self._base[offset : offset + have]
        view[have:] = bytes(len(view) - have)
        for o, p in self._patches:
            s, e = max(o, offset), min(o + len(p), end)
            if s < e:
                view[s - offset : e - offset] = p[s - o : e - o]

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        return [Extent(offset, length, ExtentKind.DATA)] if length else []

    def add_patch(self, offset: int, data: bytes) -> None:
        if offset < self._size:
            self._patches.append((offset, data))


def walk_files(tree: Any, max_entries: int = 100, read: int = 64 * 1024) -> None:
    """List ``tree`` from its root as ``ls -R`` does and read every entry's extended attributes and the
    start of every file and stream, as ``extract`` does, up to ``max_entries`` entries; the project's own
    error for one file is allowed."""
    import itertools

    from imaging_utility.errors import Error

    for entry in itertools.islice(tree.walk("/"), max_entries):
        if entry.type != "damaged":
            try:
                tree.xattrs(entry.path)
            except Error:
                pass
        if entry.type != "file":
            continue
        try:
            with tree.open(entry.path) as stream:
                stream.read(read)
            for name in entry.streams:
                with tree.open(entry.path, name) as stream:
                    stream.read(read)
        except Error:
            pass


def patches(data: bytes, size: int) -> list[tuple[int, bytes]]:
    """Records ``u32 offset, u8 length - 1, bytes`` (offsets taken modulo ``size``) until the data ends."""
    out = []
    pos = 0
    while pos + 5 <= len(data) and size:
        off, n = struct.unpack_from("<IB", data, pos)
        pos += 5
        out.append((off % size, data[pos : pos + n + 1]))
        pos += n + 1
    return out


class ErrorLog(logging.Handler):
    """Collects ERROR records (a server's "request failed" log is a crash the server swallowed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            record, self.records = self.records[0], []
            raise AssertionError(f"logged as an error: {record.getMessage()}\n{record.exc_text or ''}")


def scratch_dir() -> str:
    """A private directory on tmpfs when there is one (image harnesses write their input there),
    removed when the process exits."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="iu-fuzz-", dir=root)
    atexit.register(shutil.rmtree, path, True)
    return path


# --- checksum fix-ups: let mutations reach the checks behind a CRC --------------------------------------

def fix_image(raw: bytes) -> bytes:
    """``raw`` as far as its frames walk, with every metadata frame's CRC-32, the trailer's FCRC list and
    the seek table recomputed to match: what is left wrong is what the mutation changed on purpose."""
    from imaging_utility.format import c_image as c
    from imaging_utility.format.index import SeekTable, walk_frames

    def read_at(offset: int, n: int) -> bytes:
        return raw[offset : offset + n]

    out = bytearray()
    table = SeekTable()
    crcs = bytearray()
    for fr in walk_frames(read_at, len(raw)):
        if fr.magic == c.SEEK_TABLE_MAGIC:
            break
        frame = bytearray(raw[fr.offset : fr.offset + fr.length])
        if fr.magic == c.ZSTD_MAGIC:
            if (fr.content_size or 0) > 0xFFFFFFFF:  # no seek table can hold it: leave the input as it is
                return raw
            crcs += struct.pack("<I", zlib.crc32(frame))
            table.append(len(frame), fr.content_size, fr.checksum or 0)
        else:
            if fr.magic == c.TRAILER_MAGIC:
                _set_section(frame, c.TRAILER_FIXED.size, b"FCRC", bytes(crcs))
            if fr.magic in (c.HEADER_MAGIC, c.TRAILER_MAGIC, c.EVENT_MAGIC) and len(frame) >= 12:
                struct.pack_into("<I", frame, len(frame) - 4, zlib.crc32(frame[8:-4]))
            table.append(len(frame), 0, c.XXH64_EMPTY_LOW32)
        out += frame
    return bytes(out + table.encode())


def _set_section(frame: bytearray, fixed: int, tag: bytes, data: bytes) -> None:
    """Overwrite section ``tag`` of a metadata frame in place when it has the same length."""
    if len(frame) < 8 + fixed:
        return
    count = struct.unpack_from("<I", frame, 8 + fixed - 8)[0]
    pos = 8 + fixed
    for _ in range(min(count, 64)):
        if pos + 8 > len(frame) - 4:
            return
        t, n = struct.unpack_from("<4sI", frame, pos)
        if t == tag and n == len(data):
            frame[pos + 8 : pos + 8 + n] = data
            return
        pos += 8 + n


def fix_gpt(source: PatchedSource) -> None:
    """Recompute the CRC-32s of the primary and backup GPT headers and their entry arrays."""
    for ss in (512, 4096):
        for lba in (1, source.size // ss - 1):
            off = lba * ss
            if lba < 1 or off + 92 > source.size:
                continue
            hdr = bytearray(_read(source, off, min(ss, 512)))
            if hdr[:8] != b"EFI PART":
                continue
            hsize = struct.unpack_from("<I", hdr, 12)[0]
            if not 92 <= hsize <= len(hdr):
                continue
            entry_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
            n, eoff = count * esize, entry_lba * ss
            if 0 < n <= 4 << 20 and eoff + n <= source.size:
                struct.pack_into("<I", hdr, 88, zlib.crc32(_read(source, eoff, n)))
            struct.pack_into("<I", hdr, 16, 0)
            struct.pack_into("<I", hdr, 16, zlib.crc32(hdr[:hsize]))
            source.add_patch(off, bytes(hdr))


def fix_filesystem(source: PatchedSource) -> None:
    """Recompute the exFAT boot-region checksum and ext4 group descriptor checksums."""
    from imaging_utility.errors import Error
    from imaging_utility.filesystems import exfat, ext

    head = _read(source, 0, min(source.size, 4096))
    if head[3:11] == b"EXFAT   " and len(head) > 108:
        ss = 1 << min(max(head[108], 9), 12)
        if 12 * ss <= source.size:
            checksum = exfat.boot_checksum(_read(source, 0, 11 * ss), ss)
            source.add_patch(11 * ss, struct.pack("<I", checksum) * (ss // 4))
        return
    if source.size < 2048:
        return
    try:
        sb = ext.ExtSuper.from_bytes(_read(source, 1024, 1024))
    except Error:
        return
    if sb is None or sb.desc_checksum(0, bytes(sb.desc_size)) is None:
        return
    for g in range(min(sb.groups, 512)):  # each fix is a patch every later read walks: keep it quadratic-small
        off = sb.desc_block(g // sb.desc_per_block) * sb.block_size + g % sb.desc_per_block * sb.desc_size
        if off + sb.desc_size > source.size:
            return
        want = sb.desc_checksum(g, _read(source, off, sb.desc_size))
        if want is not None:
            source.add_patch(off + ext.BG_CHECKSUM_OFFSET, struct.pack("<H", want))


def _read(source: PatchedSource, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    source.readinto_at(offset, buf)
    return bytes(buf)


def fuzz_main(test: Callable[[bytes], None], script: str) -> None:
    """``atheris.Setup`` + ``Fuzz`` with argv[0] as a whole command: libFuzzer's ``-merge`` and ``-fork``
    modes start the target again by running argv[0] through the shell."""
    import sys

    import atheris

    atheris.Setup([f"{sys.executable} {os.path.abspath(script)}", *sys.argv[1:]], test)
    atheris.Fuzz()
