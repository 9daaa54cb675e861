"""Binary declarations of the image format 1.0 (normative spec: docs/image-format.md).

An image is a sequence of frames:

    [header skippable frame][data frame]...[event frames]...[trailer skippable frame][seek table]

Data frames are standard zstd frames (one per chunk, with content size and
content checksum).  Metadata lives in skippable frames, which ``zstd -d``
ignores; the last frame is the standard zstd seekable-format seek table.
All integers are little-endian.
"""

from __future__ import annotations

import struct

# --- zstd frame magics -------------------------------------------------------
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_BASE = 0x184D2A50
HEADER_MAGIC = 0x184D2A51  # our header frame
TRAILER_MAGIC = 0x184D2A52  # our trailer frame
EVENT_MAGIC = 0x184D2A53  # our event frames (bad ranges found while imaging)
SEEK_TABLE_MAGIC = 0x184D2A5E  # zstd seekable format: seek table frame
OUR_MAGICS = (HEADER_MAGIC, TRAILER_MAGIC, EVENT_MAGIC, SEEK_TABLE_MAGIC)  # other skippable magics: ignored
SEEKABLE_FOOTER_MAGIC = 0x8F92EAB1

SKIPPABLE_HEADER = struct.Struct("<II")  # magic, frame_size (bytes of user data)
SEEK_ENTRY = struct.Struct("<III")  # compressed_size, decompressed_size, checksum (checksum flag set)
SEEK_FOOTER = struct.Struct("<IBI")  # number_of_frames, seek_table_descriptor, seekable_magic
SEEK_DESCRIPTOR_CHECKSUM = 0x80
SEEK_DESCRIPTOR_RESERVED = 0x7C
XXH64_EMPTY_LOW32 = 0x51D8E999  # seek-table checksum for frames with no content (skippable frames)

# --- our metadata frames ------------------------------------------------------
FORMAT_VERSION_MAJOR = 1
FORMAT_VERSION_MINOR = 0
# Pre-release builds wrote the 1.0 layout with version fields 2.0; read as 1.0 (spec §10).
PRERELEASE_VERSION = (2, 0)

HEADER_SIGNATURE = b"IMGUTHDR"
TRAILER_SIGNATURE = b"IMGUTTRL"
EVENT_SIGNATURE = b"IMGUTEVT"

# signature, version_major, version_minor, flags, chunk_size, sector_size, source_size, section_count, reserved
HEADER_FIXED = struct.Struct("<8sHHIIIQII")
# signature, version_major, version_minor, flags, source_size, chunk_count, section_count, reserved
TRAILER_FIXED = struct.Struct("<8sHHIQQII")
# signature, version_major, version_minor, flags, chunk_index, section_count, reserved
EVENT_FIXED = struct.Struct("<8sHHIQII")
SECTION_HEADER = struct.Struct("<4sI")  # tag, length
CRC = struct.Struct("<I")  # CRC-32 (zlib polynomial) of everything before it in the user data

HEADER_FLAG_USED_ONLY = 0x1  # an AMAP section is present
TRAILER_FLAG_BAD_RANGES = 0x1  # a BADR section is present

SECTION_META = b"META"  # UTF-8 JSON object
SECTION_ALLOCATION = b"AMAP"  # allocation map: (start u64, end u64) pairs, sorted, non-overlapping
SECTION_BAD_RANGES = b"BADR"  # unreadable ranges: (start u64, end u64) pairs
SECTION_FRAME_CRCS = b"FCRC"  # u32 CRC-32 of each data frame's compressed bytes, in chunk order
RANGE_PAIR = struct.Struct("<QQ")

# --- the zero frame (spec §2.1): one zstd frame of RLE blocks, the same bytes whatever the zstd library
ZERO_FRAME_DESCRIPTOR = 0x84  # FCS_Field_Size 4 bytes, no single segment, Content_Checksum, no dictionary
ZERO_FRAME_WINDOW = 0x38  # Window_Descriptor: exponent 7, mantissa 0 -> 128 KiB
ZERO_FRAME_HEAD = struct.Struct("<IBBI")  # magic, descriptor, window descriptor, Frame_Content_Size
ZERO_FRAME_BLOCK = 128 * 1024  # bytes each RLE block regenerates (the last one: the rest)
ZSTD_BLOCK_RLE = 1

# --- limits -------------------------------------------------------------------
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 256 * 1024 * 1024  # frames must stay < 4 GiB compressed; keep a wide margin
MAX_SKIPPABLE_DATA = 0xFFFFFFFF
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_LEVEL = 3
