"""Intel Matrix Storage / RST (IMSM) metadata written from mdadm's ``super-intel.c`` layout: the MPB at the
second-to-last sector of a member (the rest of a longer one in the sectors before it), the disk table, one
device record and map per volume, the 32-bit word checksum.  Nothing here has Intel's option ROM, so
``mdadm --examine`` (with ``IMSM_NO_PLATFORM=1``) reads every disk this writes and the tests compare."""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
SIGNATURE = b"Intel Raid ISM Cfg Sig. 1.3.00"


@dataclass
class Vol:
    name: str
    offset: int  # bytes from the start of each member
    size: int  # bytes
    level: int = 1
    members: int = 2
    state: int = 0  # 0 normal, 1 uninitialized, 2 degraded, 3 failed
    migrating: bool = False


def mpb(disk_bytes: int, volumes: list[Vol], disks: int = 2, sector: int = SECTOR) -> bytes:
    """The MPB; sizes and offsets count ``sector``-byte sectors (a 4Kn disk's are 4096: mdadm's convert_to_4k)."""
    table = b"".join(struct.pack("<16sIIIII12s", f"DISK{i:04d}".encode(), disk_bytes // sector, i, 0x02, 0, 0,
                                 b"") for i in range(disks))
    devs = b""
    for v in volumes:
        per_member = v.size // sector if v.level == 1 else v.size // sector // v.members
        strip = 128 * SECTOR // sector  # 64 KiB
        stripes = per_member if v.level == 1 else per_member // strip  # as mdadm writes them
        one = struct.pack("<IIIHBBBBBBIII16s", v.offset // sector, per_member, stripes, strip, v.state, v.level,
                          v.members, 2 if v.level in (1, 10) else 1, 0xFF, 1, 0, 0, 0, b"")
        one += b"".join(struct.pack("<I", i) for i in range(v.members))
        vol = struct.pack("<IIBBBBHHI12s", 0, 0, int(v.migrating), 1 if v.migrating else 0, 0, 0xFF, 0, 0, 0, b"")
        dev = struct.pack("<16sIIII", v.name.encode(), v.size // sector, 0, 0, 0).ljust(80, b"\0")
        devs += dev + vol + one + (one if v.migrating else b"")
    head = struct.pack("<32sIIIIIIBBBBIIII", SIGNATURE, 0, 0, 0x5EED0001, 3, 0, 0, disks, len(volumes), 0, 0, 0,
                       0x5EED0001, 0, 0).ljust(0xD8, b"\0")
    body = bytearray(head + table + devs)
    struct.pack_into("<I", body, 0x24, len(body))
    struct.pack_into("<I", body, 0x20, sum(struct.unpack_from(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF)
    return bytes(body)


def write(path: Path, volumes: list[Vol], disks: int = 2, sector: int = SECTOR) -> None:
    """The MPB at the end of the disk file ``path`` (its size left as it is), for a disk of ``sector``-byte
    sectors: the anchor in the second-to-last sector, the rest in the sectors before it."""
    size = path.stat().st_size
    raw = mpb(size, volumes, disks, sector)
    first, rest = raw[:sector].ljust(sector, b"\0"), raw[sector:]
    with open(path, "r+b") as f:
        f.seek(size - 2 * sector)
        f.write(first)
        if rest:
            extra = -(-len(rest) // sector)
            f.seek(size - (2 + extra) * sector)
            f.write(rest.ljust(extra * sector, b"\0"))


def examine(path: Path, sector: int = SECTOR) -> str:
    """``mdadm --examine`` of the disk file (through a read-only loop device of ``sector``-byte sectors)."""
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", "--sector-size", str(sector), str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        return subprocess.run(["mdadm", "--examine", dev], capture_output=True, text=True, check=True,
                              env={**os.environ, "IMSM_NO_PLATFORM": "1", "IMSM_DEVNAME_AS_SERIAL": "1"}).stdout
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
