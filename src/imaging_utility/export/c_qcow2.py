"""qcow2 version 3 structures (QEMU ``docs/interop/qcow2.txt``), big-endian.

Digest with sources and pitfalls: ``shared/reference/qcow2.md``.  Layout written by ``qcow2.py``::

    cluster 0          header (written last)
    clusters 1..       L1 table (written last)
    then               data clusters in guest order (compressed ones byte-packed), each L2 table
                       appended as soon as its 512 MiB (with 64 KiB clusters) of guest space is done
    end                refcount table, then the refcount blocks (16-bit refcounts)
"""

from __future__ import annotations

import struct

MAGIC = b"QFI\xfb"
VERSION = 3
# magic, version, backing_file_offset, backing_file_size, cluster_bits, size, crypt_method, l1_size,
# l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots, snapshots_offset,
# incompatible_features, compatible_features, autoclear_features, refcount_order, header_length
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
COMPRESSION_TYPE = struct.Struct(">B7x")  # at offset 104, padded to 112 (header_length must be a multiple of 8)
HEADER_LENGTH = 104
HEADER_LENGTH_WITH_COMPRESSION = 112
HEADER_EXTENSION_END = struct.Struct(">II")  # type 0, length 0
INCOMPAT_COMPRESSION_TYPE = 1 << 3
COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

REFCOUNT_ORDER = 4  # 16-bit refcounts, QEMU's default
REFCOUNT = struct.Struct(">H")
ENTRY = struct.Struct(">Q")
OFLAG_COPIED = 1 << 63  # refcount is exactly 1
OFLAG_COMPRESSED = 1 << 62
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55

DEFAULT_CLUSTER_BITS = 16
MIN_CLUSTER_BITS = 9  # QEMU's limits
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20  # QEMU refuses larger L1 tables (QCOW_MAX_L1_SIZE)
MAX_REFTABLE_BYTES = 8 << 20  # QCOW_MAX_REFTABLE_SIZE
SECTOR = 512


def l2_entries(cluster_size: int) -> int:
    return cluster_size // ENTRY.size


def l1_size(virtual_size: int, cluster_size: int) -> int:
    """L1 entries needed: one per L2 table's worth of guest space."""
    return -(-virtual_size // (cluster_size * l2_entries(cluster_size)))


def compressed_entry(offset: int, length: int, cluster_bits: int) -> int:
    """L2 entry of a compressed cluster: byte offset in bits 0..x-1, additional 512-byte sectors above.

    The sector count has ``cluster_bits - 8`` bits; data shorter than a cluster (the only data stored
    compressed) touches at most ``2 ** (cluster_bits - 8)`` sectors wherever it starts, so it always fits."""
    x = 62 - (cluster_bits - 8)
    nsect = ((offset + length - 1) >> 9) - (offset >> 9)
    return OFLAG_COMPRESSED | (nsect << x) | offset

