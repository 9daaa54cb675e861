"""VMDK hosted sparse extent structures (VMware *Virtual Disk Format 5.0*), little-endian, in sectors.

Digest with sources and pitfalls: ``shared/reference/vmdk.md``.  Layouts written by ``vmdk.py``::

    monolithicSparse   header, descriptor (sectors 1-20), redundant GD + GTs, GD + GTs, grains
    streamOptimized    header (GD at end), descriptor, grain records (zlib) in LBA order, each GT after
                       the last grain it maps (GT marker), GD marker + GD, footer marker + footer, EOS
"""

from __future__ import annotations

import struct

SECTOR = 512
MAGIC = b"KDMV"
# magic, version, flags, capacity, grain_size, descriptor_offset, descriptor_size, num_gtes_per_gt,
# rgd_offset, gd_offset, over_head, unclean_shutdown, newline check bytes, compress_algorithm
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
NEWLINE_CHECK = b"\n \r\n"
FLAG_VALID_NEWLINE = 0x1
FLAG_REDUNDANT_GD = 0x2
FLAG_COMPRESSED = 0x10000
FLAG_MARKERS = 0x20000
SPARSE_VERSION = 1
SPARSE_FLAGS = FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GD
STREAM_VERSION = 3  # ESXi and ovftool refuse older stream versions
STREAM_FLAGS = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS
COMPRESS_NONE = 0
COMPRESS_DEFLATE = 1  # a zlib stream (RFC 1950), despite the name
GD_AT_END = 0xFFFFFFFFFFFFFFFF

DESCRIPTOR_OFFSET = 1
DESCRIPTOR_SECTORS = 20
GTES_PER_GT = 512  # the only value VMware supports
GTE = struct.Struct("<I")
GT_SECTORS = GTES_PER_GT * GTE.size // SECTOR  # 4

# streamOptimized records
GRAIN_MARKER = struct.Struct("<QI")  # lba, size (compressed bytes follow)
METADATA_MARKER = struct.Struct("<QII")  # num_sectors, size (0), type; padded to a sector
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

DEFAULT_GRAIN = 64 * 1024  # 128 sectors
MIN_GRAIN = 8192  # the spec: a power of two greater than 8 sectors (libvmdk refuses 8)
MAX_GRAIN = 64 * 1024  # VMware's code accepts at most 128 sectors
MAX_CAPACITY = (1 << 32) * SECTOR  # 2 TiB: VMware's limit for hosted sparse extents
MAX_FILE_SECTOR = 0xFFFFFFFF  # table entries are u32 sector numbers


def descriptor(create_type: str, capacity_sectors: int, file_name: str, cid: int, ddb: dict[str, str]) -> bytes:
    """The embedded text descriptor, NUL-padded to its 20 sectors."""
    lines = [
        "# Disk DescriptorFile", "version=1", 'encoding="UTF-8"', f"CID={cid:08x}", "parentCID=ffffffff",
        f'createType="{create_type}"', "", "# Extent description",
        f'RW {capacity_sectors} SPARSE "{file_name}"', "", "# The Disk Data Base", "#DDB", "",
        *(f'ddb.{k} = "{v}"' for k, v in ddb.items()), "",
    ]
    text = "\n".join(lines).encode()
    if len(text) > DESCRIPTOR_SECTORS * SECTOR:
        raise ValueError(f"VMDK descriptor of {len(text)} bytes does not fit in {DESCRIPTOR_SECTORS} sectors")
    return text.ljust(DESCRIPTOR_SECTORS * SECTOR, b"\0")


def scsi_geometry(capacity_sectors: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors as VMware writes them for an lsilogic (SCSI) disk."""
    return min(65535, -(-capacity_sectors // (255 * 63))), 255, 63
