"""VHDX structures (Microsoft [MS-VHDX] v4.0, 2018-09-12), little-endian; GUIDs in ``bytes_le`` order.

Digest with sources and pitfalls: ``shared/reference/vhdx.md``.  Layout written by ``vhdx.py``::

    0        File Type Identifier ("vhdxfile" + creator)        64 KiB
    64 KiB   Header 1 (sequence 1)      128 KiB  Header 2 (sequence 2)
    192 KiB  Region Table 1             256 KiB  Region Table 2 (identical)
    1 MiB    Log (1 MiB, empty: LogGuid = 0)
    2 MiB    Metadata region (1 MiB)
    3 MiB    BAT region (n MiB)
    then     payload blocks, each on a 1 MiB boundary
"""

from __future__ import annotations

import struct
import uuid

KiB = 1 << 10
MiB = 1 << 20

# --- file type identifier (offset 0) ------------------------------------------------------------------
FILE_SIGNATURE = b"vhdxfile"
FILE_ID = struct.Struct("<8s512s")  # signature, creator (UTF-16LE, informational)
CREATOR_CHARS = 256

# --- headers (offsets 64 KiB and 128 KiB; checksum over 4 KiB) -----------------------------------------
HEADER_SIGNATURE = b"head"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
# signature, checksum, sequence_number, file_write_guid, data_write_guid, log_guid, log_version, version,
# log_length, log_offset
HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
HEADER_CHECKSUM_OFFSET = 4
HEADER_VERSION = 1
LOG_VERSION = 0

# --- region tables (offsets 192 KiB and 256 KiB; checksum over 64 KiB) -----------------------------------
REGION_SIGNATURE = b"regi"
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
REGION_TABLE_HEADER = struct.Struct("<4sIII")  # signature, checksum, entry_count, reserved
REGION_TABLE_CHECKSUM_OFFSET = 4
REGION_ENTRY = struct.Struct("<16sQII")  # guid, file_offset, length, required (bit 0)
REGION_REQUIRED = 0x1
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

# --- metadata region ----------------------------------------------------------------------------------
METADATA_SIGNATURE = b"metadata"
METADATA_TABLE_HEADER = struct.Struct("<8sHH20s")  # signature, reserved, entry_count, reserved2
METADATA_ENTRY = struct.Struct("<16sIIII")  # item_id, offset, length, flags, reserved2
METADATA_TABLE_SIZE = 64 * KiB  # items start after the table
METADATA_MAX_ITEM = 1 * MiB
MD_IS_USER = 0x1
MD_IS_VIRTUAL_DISK = 0x2
MD_IS_REQUIRED = 0x4

FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")

FILE_PARAMETERS = struct.Struct("<II")  # block_size, flags
FP_LEAVE_BLOCK_ALLOCATED = 0x1  # fixed file
FP_HAS_PARENT = 0x2
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

# --- BAT ----------------------------------------------------------------------------------------------
BAT_ENTRY = struct.Struct("<Q")
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_FULLY_PRESENT = 6
SB_BLOCK_NOT_PRESENT = 0
BAT_OFFSET_SHIFT = 20  # FileOffsetMB in bits 20-63

# --- fixed layout and limits ----------------------------------------------------------------------------
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
DEFAULT_BLOCK_SIZE = 32 * MiB
MAX_VIRTUAL_SIZE = 64 << 40  # 64 TiB
SECTOR_SIZES = (512, 4096)
SECTOR_BITMAP_BASE = 1 << 23  # sectors described by one 1 MiB sector-bitmap block


def chunk_ratio(block_size: int, logical_sector_size: int) -> int:
    """Payload blocks per sector-bitmap block (MS-VHDX 2.5.1)."""
    return SECTOR_BITMAP_BASE * logical_sector_size // block_size


def bat_entries(virtual_size: int, block_size: int, logical_sector_size: int) -> int:
    """TotalBATEntries for a fixed or dynamic file: payload entries plus the interleaved sector-bitmap
    entries that precede each later chunk (none after the last one)."""
    blocks = -(-virtual_size // block_size)
    if blocks == 0:
        return 0
    return blocks + (blocks - 1) // chunk_ratio(block_size, logical_sector_size)


def bat_index(block: int, ratio: int) -> int:
    """Index in the BAT of payload block ``block``: every ``ratio`` blocks skip one sector-bitmap slot."""
    return block + block // ratio


def bat_region_length(entries: int) -> int:
    return max(MiB, -(-entries * BAT_ENTRY.size // MiB) * MiB)
