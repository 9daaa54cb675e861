"""Load an image's frame layout and check it before any data is returned (docs/image-format.md §8).

Reads the seek table, then every metadata frame it lists (header, event frames, trailer; unknown
skippable frames are skipped), and checks how they agree: one header first, one trailer last, the
chunk sizes the header implies, every event frame right after its chunk with ranges inside it, the
event frames' ranges equal to the trailer's list, the digests the header names present in the
trailer, and a used-only image's allocation map against its META.  Anything else is a
``CorruptImageError`` naming the frame; a newer major format version is an ``UnsupportedError``.
Data frames are checked when they are decoded (``ImageReader.decode_chunk``), not here.
"""

from __future__ import annotations

import itertools
import sys
from array import array
from dataclasses import dataclass

from ..errors import CorruptImageError, IncompleteImageError
from ..extents import AllocationMap
from ..format import c_image as c
from ..format.index import SeekTable
from ..format.metaframe import Event, Header, Trailer
from ..format.schema import check_digests_agree
from ..storage import BlobReader
from ..storage.local import next_part_name

Ranges = list[tuple[int, int]]


@dataclass
class Layout:
    header: Header
    trailer: Trailer
    image_bytes: int  # the whole image (every part), seek table included
    table_offset: int
    chunk_count: int
    last_len: int  # bytes of the last chunk
    chunk_offsets: array[int]  # image offset of each data frame
    chunk_csizes: array[int]  # its compressed size (seek table)
    chunk_sums: array[int]  # its Content_Checksum (seek table)
    frame_crcs: array[int]  # the trailer's FCRC: CRC-32 of each data frame's bytes
    bad_ranges: Ranges  # unreadable source ranges, (offset, length)
    allocation: AllocationMap | None  # used-only images


def load_layout(parts: BlobReader) -> Layout:
    read_at, file_size = parts.read_at, parts.size
    try:
        table, table_off = SeekTable.load(read_at, file_size)
    except IncompleteImageError:
        later = next_part_name(parts.paths)
        if later is None:
            raise
        raise IncompleteImageError(
            f"no seek table at the end of the last part {parts.paths[-1]}: the capture was interrupted (continue "
            f"it with 'image --resume'), or the parts after it ({later} ...) are missing") from None
    if len(table) < 2 or table.dsizes[0] != 0 or table.checksums[0] != c.XXH64_EMPTY_LOW32:
        raise CorruptImageError("the seek table does not start with a header frame and end with a trailer")
    offsets = array("Q", itertools.accumulate(table.csizes, initial=0))
    magic, hsize = c.SKIPPABLE_HEADER.unpack(read_at(0, c.SKIPPABLE_HEADER.size))
    if magic != c.HEADER_MAGIC:
        raise CorruptImageError(f"not an imaging-utility image: first frame magic {magic:#010x}")
    if hsize + 8 != table.csizes[0]:
        raise CorruptImageError(f"header frame size {hsize + 8} disagrees with the seek table ({table.csizes[0]})")
    header = Header.decode(read_at(8, hsize), 8)
    size, chunk_size = header.source_size, header.chunk_size
    chunk_count = -(-size // chunk_size)
    last_len = size - (chunk_count - 1) * chunk_size if chunk_count else chunk_size
    chunk_offsets, chunk_csizes, chunk_sums = array("Q"), array("I"), array("I")
    trailer: Trailer | None = None
    event_ranges: Ranges = []
    last_event_chunk = -1
    n = len(table)
    for i in range(1, n):
        dsize, off, csize = table.dsizes[i], offsets[i], table.csizes[i]
        if dsize:
            k = len(chunk_offsets)
            expected = min(chunk_size, size - k * chunk_size)
            if k >= chunk_count or dsize != expected:
                raise CorruptImageError(
                    f"seek table entry {i}: chunk {k} holds {dsize} bytes, expected {max(expected, 0)}"
                )
            chunk_offsets.append(off)
            chunk_csizes.append(csize)
            chunk_sums.append(table.checksums[i])
            continue
        if csize < 8 or table.checksums[i] != c.XXH64_EMPTY_LOW32:
            raise CorruptImageError(
                f"seek table entry {i}: skippable frame of {csize} bytes at offset {off:#x} "
                f"with checksum {table.checksums[i]:#010x} (expected {c.XXH64_EMPTY_LOW32:#010x})"
            )
        fmagic, fsize = c.SKIPPABLE_HEADER.unpack(read_at(off, 8))
        if fmagic & c.SKIPPABLE_MASK != c.SKIPPABLE_BASE or fsize + 8 != csize:
            raise CorruptImageError(f"frame {i} at offset {off:#x} is not the skippable frame the seek table says")
        if fmagic == c.HEADER_MAGIC:
            raise CorruptImageError(f"frame {i} at offset {off:#x} is a second header frame")
        if fmagic == c.TRAILER_MAGIC:
            if i != n - 1:
                raise CorruptImageError(f"frame {i} at offset {off:#x} is a trailer, but not the last frame")
            trailer = Trailer.decode(read_at(off + 8, fsize), off + 8)
        elif fmagic == c.EVENT_MAGIC:
            event = Event.decode(read_at(off + 8, fsize), off + 8)
            what = f"event frame {i} at offset {off:#x}"
            if event.chunk_index != len(chunk_offsets) - 1 or event.chunk_index == last_event_chunk:
                raise CorruptImageError(f"{what} names chunk {event.chunk_index}, but follows the data frame of "
                                        f"chunk {len(chunk_offsets) - 1}" + (" and another event frame"
                                        if event.chunk_index == last_event_chunk else ""))
            event.check_chunk(chunk_size, size, what)
            last_event_chunk = event.chunk_index
            event_ranges.extend(event.bad_ranges)
        # any other skippable frame (a later minor version's, or none of ours) is skipped
    if len(chunk_offsets) != chunk_count:
        raise CorruptImageError(
            f"seek table lists {len(chunk_offsets)} chunks, the header's size needs {chunk_count}"
        )
    if trailer is None:
        raise CorruptImageError("image has no trailer frame (the last frame before the seek table)")
    if trailer.source_size != size or trailer.chunk_count != chunk_count:
        raise CorruptImageError(
            f"trailer says {trailer.source_size} bytes in {trailer.chunk_count} chunks, the header "
            f"{size} bytes in {chunk_count}"
        )
    check_digests_agree(header.meta, trailer.meta, header.used_only)
    if union(event_ranges) != union(trailer.bad_ranges):
        raise CorruptImageError(
            f"the trailer lists {len(trailer.bad_ranges)} unreadable ranges, the event frames "
            f"{len(event_ranges)} that differ from them: an event frame is missing or damaged"
        )
    frame_crcs = array("I", trailer.frame_crcs or b"")
    if sys.byteorder == "big":
        frame_crcs.byteswap()
    return Layout(header, trailer, file_size, table_off, chunk_count, last_len, chunk_offsets, chunk_csizes,
                  chunk_sums, frame_crcs, trailer.bad_ranges, _allocation(header))


def _allocation(header: Header) -> AllocationMap | None:
    if header.allocation is None:
        return None
    try:
        amap = AllocationMap.decode(header.allocation, header.source_size)
    except ValueError as e:
        raise CorruptImageError(f"image header: {e}") from None
    uo = header.meta["used_only"]
    for key, actual in (("used_bytes", amap.used_bytes), ("extents", len(amap))):
        if key in uo and uo[key] != actual:
            raise CorruptImageError(f"image header: META used_only.{key} is {uo[key]}, the AMAP section "
                                    f"holds {actual}")
    return amap


def union(ranges: Ranges) -> Ranges:
    """Sorted ``(offset, length)`` ranges with overlapping and touching ones merged: a set of bytes."""
    out: Ranges = []
    for o, n in sorted(ranges):
        if out and o <= out[-1][0] + out[-1][1]:
            po, pn = out[-1]
            out[-1] = (po, max(pn, o + n - po))
        else:
            out.append((o, n))
    return out
