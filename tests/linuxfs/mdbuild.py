"""Linux MD RAID member superblocks written by hand (this machine's kernel has no md driver, so ``mdadm
--create`` cannot run); ``mdadm --examine`` reads each back in the tests, so the layout is checked by
mdadm's own parser, not by ours.  Layouts: the kernel's ``md_p.h``, mdadm's ``super0.c``/``super1.c``."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

MAGIC = 0xA92B4EFC
SET_UUID = uuid.UUID("6b8f1c2e-3d4a-4b5c-9e7f-0a1b2c3d4e5f")


def csum(data: bytes | bytearray) -> int:
    total = sum(struct.unpack_from(f"<{len(data) // 4}I", data))
    if len(data) % 4:
        total += struct.unpack_from("<H", data, len(data) - 2)[0]
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def sb1_location(version: str, size: int) -> int:
    return {"1.1": 0, "1.2": 4096, "1.0": ((size // 512 - 16) & ~7) * 512}[version]


def write_sb1(path: Path, version: str, level: int, raid_disks: int, data_offset: int, data_size: int,
              role: int = 0, name: str = "host:0", dev_number: int = 0, recovery_offset: int | None = None) -> int:
    """Write a 1.x superblock into ``path`` (its size fixed); ``data_offset``/``data_size`` in bytes.
    ``role``: 0.. the slot in the array, 0xffff a spare; ``recovery_offset`` (sectors): a device being
    rebuilt.  Returns where it was written."""
    size = os.path.getsize(path)
    at = sb1_location(version, size)
    max_dev = max(raid_disks, dev_number + 1)
    sb = bytearray(256 + 2 * max_dev)
    struct.pack_into("<IIII", sb, 0, MAGIC, 1, 0 if recovery_offset is None else 2, 0)  # feature 2: recovering
    sb[16:32] = SET_UUID.bytes
    sb[32:64] = name.encode().ljust(32, b"\0")
    struct.pack_into("<QiiQII", sb, 64, 1_700_000_000, level, 2 if level in (5, 6) else 0,
                     data_size // 512, 128 if level not in (1, -1) else 0, raid_disks)
    struct.pack_into("<QQQQ", sb, 128, data_offset // 512, data_size // 512, at // 512, recovery_offset or 0)
    struct.pack_into("<I", sb, 160, dev_number)
    sb[168:184] = uuid.UUID(int=0x1234 + dev_number).bytes
    struct.pack_into("<QQQ", sb, 192, 1_700_000_100, 10, 2**64 - 1)  # utime, events, resync_offset: clean
    struct.pack_into("<I", sb, 220, max_dev)
    for slot in range(max_dev):
        struct.pack_into("<H", sb, 256 + 2 * slot, 0xFFFE)
    for slot in range(raid_disks):
        struct.pack_into("<H", sb, 256 + 2 * slot, slot)
    struct.pack_into("<H", sb, 256 + 2 * dev_number, role)
    struct.pack_into("<I", sb, 216, csum(sb))
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(sb)
    return at


def sb0_location(size: int) -> int:
    return (size & ~65535) - 65536


def write_sb0(path: Path, level: int, raid_disks: int, this_disk: int = 0, state: int = 0b110) -> int:
    """Write a 0.90 superblock (little-endian, as x86 writes it) near the end of ``path``; ``state`` of this
    device: bit 0 faulty, 1 active, 2 in sync."""
    size = os.path.getsize(path)
    at = sb0_location(size)
    words = [0] * 1024
    words[0:11] = [MAGIC, 0, 90, 0, 0, 0x6B8F1C2E, 1_700_000_000, level & 0xFFFFFFFF, at // 1024, raid_disks,
                   raid_disks]
    words[13:16] = [0x3D4A4B5C, 0x9E7F0A1B, 0x2C3D4E5F]
    words[32:38] = [1_700_000_100, 1, raid_disks, raid_disks, 0, 0]  # utime, state clean, active/working disks
    words[40] = 10  # events_lo
    for disk in range(raid_disks):  # each descriptor: number, major, minor, raid_disk, state
        words[32 * (4 + disk) : 32 * (4 + disk) + 5] = [disk, 8, 16 * disk, disk, 0b110]
    words[992:997] = [this_disk, 8, 16 * this_disk, this_disk, state]
    words[32 * (4 + this_disk) + 4] = state
    total = sum(words)
    words[38] = ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<1024I", *words))
    return at
