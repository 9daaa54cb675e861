"""VHD structures (Microsoft *Virtual Hard Disk Image Format Specification* v1.0, 2006), big-endian.

Digest with sources and pitfalls: ``shared/reference/vhd.md``.  Layouts written by ``vhd.py``::

    fixed    raw disk bytes (current_size), then the 512-byte footer
    dynamic  footer copy (0), dynamic header (512, 1024 bytes), BAT (1536), blocks, footer
"""

from __future__ import annotations

import struct

SECTOR = 512
MiB = 1 << 20
GiB = 1 << 30

# --- hard disk footer (512 bytes) ---------------------------------------------------------------------
FOOTER_SIZE = 512
COOKIE = b"conectix"
# cookie, features, file_format_version, data_offset, timestamp, creator_application, creator_version,
# creator_host_os, original_size, current_size, cylinders, heads, sectors_per_track, disk_type, checksum,
# unique_id, saved_state
FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
FOOTER_CHECKSUM_OFFSET = 64
FEATURES_RESERVED = 0x2  # bit 1 is reserved and always set
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
# "win " makes QEMU (and Hyper-V, Azure) believe current_size instead of the CHS geometry.
CREATOR_APPLICATION = b"win "
CREATOR_VERSION = 0x000A0000  # Hyper-V's (10.0)
CREATOR_HOST_OS = b"Wi2k"  # what Azure expects (FreeBSD mkimg r284773)
DISK_TYPE_FIXED = 2
DISK_TYPE_DYNAMIC = 3
EPOCH_2000 = 946684800  # VHD timestamps count seconds from 2000-01-01 00:00:00 UTC

# --- dynamic disk header (1024 bytes at offset 512) ----------------------------------------------------
DYNAMIC_HEADER_OFFSET = 512
DYNAMIC_HEADER_SIZE = 1024
DYNAMIC_COOKIE = b"cxsparse"
# cookie, data_offset, table_offset, header_version, max_table_entries, block_size, checksum
DYNAMIC_HEADER = struct.Struct(">8sQQIIII")
DYNAMIC_HEADER_CHECKSUM_OFFSET = 36
HEADER_VERSION = 0x00010000
BAT_OFFSET = 1536
BAT_UNUSED = 0xFFFFFFFF
BAT_ENTRY = struct.Struct(">I")

# --- limits ---------------------------------------------------------------------------------------------
DEFAULT_BLOCK_SIZE = 2 * MiB
BLOCK_SIZES = (512 * 1024, 2 * MiB)  # what Hyper-V creates (New-VHD -BlockSizeBytes)
MAX_SIZE = 0xFF000000 * SECTOR  # 2040 GiB (spec; QEMU VHD_MAX_SECTORS)
# Azure direct upload: between 20 MiB and 32 TiB of disk, plus the footer (DiskCreationData.UploadSizeBytes).
AZURE_MIN_SIZE = 20 * MiB
AZURE_MAX_SIZE = 32 << 40
AZURE_ALIGN = MiB
CHS_MAX_SECTORS = 65535 * 16 * 255


def checksum(data: bytes | bytearray) -> int:
    """One's complement of the byte sum (the checksum field must be zero in ``data``)."""
    return ~sum(data) & 0xFFFFFFFF


def bitmap_size(block_size: int) -> int:
    """Bytes of a block's sector bitmap: one bit per sector, rounded up to whole sectors."""
    return -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR


def geometry(total_sectors: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track (VHD spec appendix "CHS calculation")."""
    ts = min(total_sectors, CHS_MAX_SECTORS)
    if ts >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = ts // spt
    else:
        spt = 17
        cth = ts // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = ts // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = ts // spt
    return cth // heads, heads, spt
