"""The zstd seekable-format seek table, and walking frames without it (docs/image-format.md §6–§7).

Seek table spec: facebook/zstd contrib/seekable_format/zstd_seekable_compression_format.md.
Frame layout: facebook/zstd doc/zstd_compression_format.md §3.1.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import CorruptImageError, IncompleteImageError
from . import c_image as c

ReadAt = Callable[[int, int], bytes]


class SeekTable:
    """Frame sizes and checksums; three ``array('I')`` columns, one row per frame (skippable ones too)."""

    __slots__ = ("checksums", "csizes", "dsizes")

    def __init__(self) -> None:
        self.csizes = array("I")
        self.dsizes = array("I")
        self.checksums = array("I")

    def __len__(self) -> int:
        return len(self.csizes)

    def append(self, csize: int, dsize: int, checksum: int) -> None:
        self.csizes.append(csize)
        self.dsizes.append(dsize)
        self.checksums.append(checksum)

    def truncate(self, n: int) -> None:
        del self.csizes[n:], self.dsizes[n:], self.checksums[n:]

    def encode(self) -> bytes:
        n = len(self)
        body = bytearray(c.SKIPPABLE_HEADER.size + n * c.SEEK_ENTRY.size + c.SEEK_FOOTER.size)
        frame_size = n * c.SEEK_ENTRY.size + c.SEEK_FOOTER.size
        if frame_size > c.MAX_SKIPPABLE_DATA:
            raise ValueError(f"seek table of {n} frames exceeds the 4 GiB skippable-frame limit")
        c.SKIPPABLE_HEADER.pack_into(body, 0, c.SEEK_TABLE_MAGIC, frame_size)
        pos = c.SKIPPABLE_HEADER.size
        for row in zip(self.csizes, self.dsizes, self.checksums, strict=True):
            c.SEEK_ENTRY.pack_into(body, pos, *row)
            pos += c.SEEK_ENTRY.size
        c.SEEK_FOOTER.pack_into(body, pos, n, c.SEEK_DESCRIPTOR_CHECKSUM, c.SEEKABLE_FOOTER_MAGIC)
        return bytes(body)

    @classmethod
    def load(cls, read_at: ReadAt, file_size: int) -> tuple[SeekTable, int]:
        """Read and validate the table at the end of a file; returns it and its frame's offset."""
        if file_size < c.SEEK_FOOTER.size + c.SKIPPABLE_HEADER.size:
            raise IncompleteImageError(f"file of {file_size} bytes is too small to hold a seek table: the capture was "
                                       "interrupted (continue it with 'image --resume') or the file is not an image")
        footer = read_at(file_size - c.SEEK_FOOTER.size, c.SEEK_FOOTER.size)
        n, descriptor, magic = c.SEEK_FOOTER.unpack(footer)
        if magic != c.SEEKABLE_FOOTER_MAGIC:
            raise _no_table(read_at, magic, n, file_size)
        if descriptor & c.SEEK_DESCRIPTOR_RESERVED:
            raise CorruptImageError(f"seek table descriptor {descriptor:#x} has reserved bits set")
        if descriptor != c.SEEK_DESCRIPTOR_CHECKSUM:
            # The seekable format lets readers ignore bits 1-0; our writer always writes 0x80, so any
            # other value is damage (and checksums are required).
            raise CorruptImageError(f"seek table descriptor {descriptor:#04x} is not 0x80 (checksums, no other bits)")
        frame_size = n * c.SEEK_ENTRY.size + c.SEEK_FOOTER.size
        table_off = file_size - frame_size - c.SKIPPABLE_HEADER.size
        if table_off < 0:
            raise CorruptImageError(f"seek table claims {n} frames, more than the file of {file_size} bytes holds")
        raw = read_at(table_off, frame_size + c.SKIPPABLE_HEADER.size)
        skip_magic, size_field = c.SKIPPABLE_HEADER.unpack_from(raw)
        if skip_magic != c.SEEK_TABLE_MAGIC or size_field != frame_size:
            raise CorruptImageError(
                f"seek table frame at offset {table_off:#x} has magic {skip_magic:#x} and size {size_field}, "
                f"expected {c.SEEK_TABLE_MAGIC:#x} and {frame_size}"
            )
        table = cls()
        entries = memoryview(raw)[c.SKIPPABLE_HEADER.size : c.SKIPPABLE_HEADER.size + n * c.SEEK_ENTRY.size]
        for csize, dsize, checksum in c.SEEK_ENTRY.iter_unpack(entries):
            table.append(csize, dsize, checksum)
        if sum(table.csizes) != table_off:
            raise CorruptImageError(
                f"seek table frame sizes add up to {sum(table.csizes)} bytes, but the frames end at {table_off}"
            )
        return table, table_off


def _no_table(read_at: ReadAt, magic: int, n: int, file_size: int) -> CorruptImageError:
    """No seekable magic at the end: an interrupted capture, unless a whole seek-table frame for the
    footer's Number_Of_Frames still ends exactly there (then only the magic is damaged)."""
    table_off = file_size - n * c.SEEK_ENTRY.size - c.SEEK_FOOTER.size - c.SKIPPABLE_HEADER.size
    if table_off >= 0:
        skip_magic, size_field = c.SKIPPABLE_HEADER.unpack(read_at(table_off, c.SKIPPABLE_HEADER.size))
        if skip_magic == c.SEEK_TABLE_MAGIC and size_field == n * c.SEEK_ENTRY.size + c.SEEK_FOOTER.size:
            return CorruptImageError(
                f"the seek table's footer is damaged: its last 4 bytes are {magic:#010x}, not the seekable "
                f"magic {c.SEEKABLE_FOOTER_MAGIC:#010x}, though the table of {n} frames is there "
                f"(offset {table_off:#x})"
            )
    return IncompleteImageError(
        f"no seek table at the end of the image ({file_size} bytes, last 4 bytes {magic:#010x}): "
        "the capture was interrupted (continue it with 'image --resume') or the file is not an image"
    )


@dataclass(frozen=True, slots=True)
class FrameInfo:
    offset: int
    length: int  # whole frame, headers and checksum included
    magic: int
    content_size: int  # zstd frames: Frame_Content_Size; skippable frames: 0
    checksum: int | None  # zstd frames: the Content_Checksum field


class _Window:
    """Sequential buffered access over ``read_at`` for walking many small headers."""

    def __init__(self, read_at: ReadAt, file_size: int, span: int = 8 << 20) -> None:
        self.read_at, self.file_size, self.span = read_at, file_size, span
        self.start, self.buf = 0, b""

    def get(self, offset: int, n: int) -> bytes | None:
        """``n`` bytes at ``offset``, or None if they lie (partly) beyond the end of the file."""
        if offset + n > self.file_size:
            return None
        if not (self.start <= offset and offset + n <= self.start + len(self.buf)):
            self.start = offset
            self.buf = self.read_at(offset, min(max(n, self.span), self.file_size - offset))
        rel = offset - self.start
        return self.buf[rel : rel + n]


def zstd_frame_length(win: _Window, off: int) -> tuple[int, int, int | None] | None:
    """Parse the zstd frame at ``off``: (length, content_size, checksum), or None if incomplete/invalid."""
    head = win.get(off, 5)
    if head is None:
        return None
    fhd = head[4]
    fcs_flag, single_segment, reserved, has_checksum, did_flag = (
        fhd >> 6, (fhd >> 5) & 1, (fhd >> 3) & 1, (fhd >> 2) & 1, fhd & 3,
    )
    if reserved:
        return None
    pos = off + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[did_flag]
    fcs_len = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if fcs_len == 0:
        return None  # our frames always carry their content size
    raw = win.get(pos, fcs_len)
    if raw is None:
        return None
    content_size = int.from_bytes(raw, "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    while True:
        bh = win.get(pos, 3)
        if bh is None:
            return None
        h = int.from_bytes(bh, "little")
        last, btype, bsize = h & 1, (h >> 1) & 3, h >> 3
        if btype == 3:
            return None
        pos += 3 + (1 if btype == 1 else bsize)
        if last:
            break
    checksum = None
    if has_checksum:
        raw = win.get(pos, 4)
        if raw is None:
            return None
        checksum = int.from_bytes(raw, "little")
        pos += 4
    if pos > win.file_size:
        return None
    return pos - off, content_size, checksum


def walk_frames(read_at: ReadAt, file_size: int, start: int = 0) -> Iterator[FrameInfo]:
    """Yield every complete frame from ``start``; stop silently at the first incomplete or unknown one."""
    win = _Window(read_at, file_size)
    off = start
    while off < file_size:
        head = win.get(off, 8)
        if head is None:
            return
        magic = int.from_bytes(head[:4], "little")
        if magic & c.SKIPPABLE_MASK == c.SKIPPABLE_BASE:
            length = 8 + int.from_bytes(head[4:8], "little")
            if off + length > file_size:
                return
            yield FrameInfo(off, length, magic, 0, None)
        elif magic == c.ZSTD_MAGIC:
            parsed = zstd_frame_length(win, off)
            if parsed is None:
                return
            length, content_size, checksum = parsed
            yield FrameInfo(off, length, magic, content_size, checksum)
        else:
            return
        off += length
