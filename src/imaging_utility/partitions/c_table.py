"""On-disk structures of the MBR and GPT (all little-endian).

Specs: UEFI 2.10 §5.2 (legacy and protective MBR) and §5.3 (GPT header and partition entry array);
digest with the rewriting rules in ``shared/reference/gpt-mbr-rewrite.md``.
"""

from __future__ import annotations

import struct

# --- MBR / EBR (one 512-byte sector) ------------------------------------------------------------
MBR_SIZE = 512
MBR_DISK_SIGNATURE_OFFSET = 0x1B8
MBR_TABLE_OFFSET = 0x1BE
MBR_SIGNATURE_OFFSET = 0x1FE
MBR_BOOT_SIGNATURE = b"\x55\xaa"
# status, chs_first, type, chs_last, lba_first, sectors
c_mbr_entry = struct.Struct("<B3sB3sII")
c_disk_signature = struct.Struct("<I")
MBR_STATUS_ACTIVE = 0x80
MBR_TYPE_EMPTY = 0x00
MBR_TYPE_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
MBR_MAX_SECTORS = 0xFFFFFFFF

# --- GPT header (LBA 1, and a backup copy at the disk's last LBA) --------------------------------
GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
# signature, revision, header_size, header_crc32, reserved, my_lba, alternate_lba, first_usable_lba,
# last_usable_lba, disk_guid, partition_entry_lba, number_of_partition_entries,
# size_of_partition_entry, partition_entry_array_crc32
c_gpt_header = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_HEADER_CRC_OFFSET = 16
GPT_MIN_ENTRY_ARRAY = 16384  # the array reserves at least this many bytes (UEFI §5.3.1)

# --- GPT partition entry -------------------------------------------------------------------------
# partition_type_guid, unique_partition_guid, starting_lba, ending_lba (inclusive), attributes,
# partition_name (36 UTF-16LE code units)
c_gpt_entry = struct.Struct("<16s16sQQQ72s")
GPT_ENTRY_GUID_OFFSET = 16  # where the unique partition GUID sits inside an entry
