"""LVM2 physical volume structures (all little-endian).

Spec: lvmteam/lvm2 ``lib/label/label.h`` (``label_header``), ``lib/format_text/layout.h``
(``pv_header``, ``disk_locn``, ``mda_header``, ``raw_locn``) and ``lib/misc/crc.c``
(``calc_crc``); summary in ``shared/reference/xfs-btrfs-lvm.md`` §3.
"""

from __future__ import annotations

import struct
import zlib

SECTOR = 512
LABEL_SCAN_SECTORS = 4  # the label may be in any of the first four sectors
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
LABEL_HEADER = struct.Struct("<8sQII8s")  # id, sector_xl, crc_xl (over bytes 20..511), offset_xl, type
LABEL_CRC_FROM = 20
PV_UUID_SIZE = 32
PV_HEADER = struct.Struct("<32sQ")  # pv_uuid, device_size_xl
DISK_LOCN = struct.Struct("<QQ")  # offset, size (bytes); a zero pair ends a list
MAX_LOCNS = 16  # more data or metadata areas than lvm2 ever writes: a damaged header

MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER = struct.Struct("<I16sIQQ")  # checksum_xl (over bytes 4..511), magic, version, start, size
MDA_HEADER_SIZE = 512
MDA_CRC_FROM = 4
RAW_LOCN = struct.Struct("<QQII")  # offset (from the mda start), size, checksum, flags
RAW_LOCN_IGNORED = 0x1
MAX_METADATA_TEXT = 16 << 20  # far above what lvm2 writes (half of a metadata area, 1 MiB by default)

INITIAL_CRC = 0xF597A6CF


def calc_crc(data: bytes | bytearray | memoryview, crc: int = INITIAL_CRC) -> int:
    """lvm2's ``calc_crc``: the reflected CRC-32 table with this initial value and no final XOR."""
    return ~zlib.crc32(data, ~crc & 0xFFFFFFFF) & 0xFFFFFFFF
