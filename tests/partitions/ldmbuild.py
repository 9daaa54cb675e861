"""Windows dynamic disks (LDM) written from the layout libldm and Linux read (``src/ldm.c``,
``block/partitions/ldm.c``): an MBR with one 0x42 partition (or a GPT with the LDM metadata and data
partitions), the PRIVHEAD at sector 6 (GPT: the metadata partition's last sector), and at the disk's end
the database: TOCBLOCK, VMDB and one VBLK per record (records longer than a VBLK span several).  Nothing
here can run Windows; ``ldmtool`` (libldm) reads every disk this writes, and the tests compare with it.
"""

from __future__ import annotations

import struct
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512
DB_SECTORS = 2048  # the 1 MiB database at the disk's end
DATA_START = 63  # MBR: the data area starts where the 0x42 partition does
GPT_META = "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"
GPT_DATA = "AF9B60A0-1431-4F62-BC68-3311714A69AD"
GROUP_GUID = "8d2c1a4e-3b7f-4c55-9a61-2f0e6d4b7c11"
THIS = "Disk1"


@dataclass
class Piece:
    start: int  # sectors into the data area of its disk
    sectors: int
    disk: str = THIS


@dataclass
class Component:
    pieces: list[Piece]
    kind: int = 2  # 1 striped, 2 concatenated, 3 RAID-5
    chunk: int = 128  # sectors (striped and RAID-5)


@dataclass
class Volume:
    name: str
    components: list[Component]
    raid5: bool = False
    sectors: int = 0  # 0: the sum of the first component's pieces
    hint: str | None = None  # a drive letter: makes the record longer than one VBLK


@dataclass
class Layout:
    volumes: list[Volume]
    other_disks: list[str] = field(default_factory=list)
    group: str = "WIN-SRV-Dg0"


def _num(v: int) -> bytes:
    raw = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
    return bytes([len(raw)]) + raw


def _text(s: str) -> bytes:
    raw = s.encode()
    return bytes([len(raw)]) + raw


def _record(kind: int, revision: int, flags: int, body: bytes) -> bytes:
    return struct.pack(">HBBI", 0, flags, revision << 4 | kind, len(body)) + body


def _disk_guid(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.ldm.test")


def _records(layout: Layout) -> tuple[list[bytes], tuple[int, int, int, int]]:
    ids = iter(range(1, 10_000))
    out = [_record(5, 4, 0, _num(next(ids)) + _text(layout.group) + _text(GROUP_GUID))]
    disk_ids: dict[str, int] = {}
    for name in [THIS, *layout.other_disks]:
        disk_ids[name] = next(ids)
        out.append(_record(4, 4, 0, _num(disk_ids[name]) + _text(name) + _disk_guid(name).bytes + bytes(4)))
    n_comp = n_part = 0
    for number, vol in enumerate(layout.volumes, 1):
        vid = next(ids)
        sectors = vol.sectors or sum(p.sectors for p in vol.components[0].pieces)
        flags = 0x02 if vol.hint else 0
        body = (_num(vid) + _text(vol.name) + _text("raid5" if vol.raid5 else "gen") + _text("8000000000000000")
                + b"ACTIVE".ljust(14, b"\0") + bytes([4 if vol.raid5 else 3, 0, number, 0, 0, 0, 0])
                + _num(len(vol.components)) + bytes(16) + _num(sectors) + bytes(4) + b"\x07"
                + uuid.uuid5(uuid.NAMESPACE_DNS, vol.name).bytes + (_text(vol.hint) if vol.hint else b""))
        out.append(_record(1, 5, flags, body))
        for c_number, comp in enumerate(vol.components):
            cid = next(ids)
            n_comp += 1
            striped = comp.kind in (1, 3)
            body = (_num(cid) + _text(f"{vol.name}-01-{c_number}") + _text("ACTIVE") + bytes([comp.kind]) + bytes(4)
                    + _num(len(comp.pieces)) + bytes(16) + _num(vid) + b"\0"
                    + (_num(comp.chunk) + _num(len(comp.pieces)) if striped else b""))
            out.append(_record(2, 3, 0x10 if striped else 0, body))
            offset = 0
            for index, piece in enumerate(comp.pieces):
                n_part += 1
                body = (_num(next(ids)) + _text(f"{piece.disk}-{n_part:02d}") + bytes(12)
                        + struct.pack(">QQ", piece.start, offset) + _num(piece.sectors) + _num(cid)
                        + _num(disk_ids[piece.disk]) + _num(index))
                out.append(_record(3, 3, 0x08, body))
                offset += piece.sectors
    return out, (len(layout.volumes), n_comp, n_part, 1 + len(layout.other_disks))


def _database(layout: Layout, vblk_size: int = 128) -> bytes:
    db = bytearray(DB_SECTORS * SECTOR)
    records, (n_vol, n_comp, n_part, n_disk) = _records(layout)
    vmdb_sector = 17
    toc = b"TOCBLOCK" + struct.pack(">I4sI16s", 1, bytes(4), 0, bytes(16))
    toc += struct.pack(">8sHQQQ", b"config", 0, vmdb_sector, 1472, 0)
    toc += struct.pack(">8sHQQQ", b"log", 0, vmdb_sector + 1472, 224, 0)
    db[2 * SECTOR : 2 * SECTOR + len(toc)] = toc
    payload = vblk_size - 16
    entries: list[bytes] = []
    for record_id, rec in enumerate(records, 1):
        pieces = [rec[i : i + payload] for i in range(0, len(rec), payload)]
        for entry, piece in enumerate(pieces):
            head = struct.pack(">4sIIHH", b"VBLK", len(entries) + 4, record_id, entry, len(pieces))
            entries.append(head + piece.ljust(payload, b"\0"))
    vmdb = struct.pack(">4sIIIHHH31s64sQQIIII", b"VMDB", len(entries) + 3, vblk_size, 512, 1, 4, 10,
                       layout.group.encode(), GROUP_GUID.encode(), 7, 7, n_vol, n_comp, n_part, n_disk)
    at = vmdb_sector * SECTOR
    db[at : at + len(vmdb)] = vmdb
    blob = b"".join(entries)
    db[at + 512 : at + 512 + len(blob)] = blob
    return bytes(db)


def privhead(data_start: int, data_sectors: int, db_start: int, group: str) -> bytes:
    head = struct.pack(">8sIHHQQQQ64s64s64s32sH9sQQQQ", b"PRIVHEAD", 0, 2, 12, 0, 0, 0, 0,
                       str(_disk_guid(THIS)).encode(), str(uuid.uuid5(uuid.NAMESPACE_DNS, "host")).encode(),
                       GROUP_GUID.encode(), group.encode(), 0, bytes(9), data_start, data_sectors, db_start,
                       DB_SECTORS)
    return head + struct.pack(">QQII", 2, 4, 1, 1)


def write_disk(path: Path, size: int, layout: Layout, scheme: str = "mbr") -> int:
    """Lay ``layout``'s LDM structures over the disk file ``path`` (``size`` bytes, its data left as it is);
    returns the data area's start in bytes (pieces are placed relative to it)."""
    total = size // SECTOR
    db_start = total - DB_SECTORS
    with open(path, "r+b") as f:
        f.truncate(size)
    if scheme == "mbr":
        subprocess.run(["sfdisk", "-q", "--no-reread", str(path)],
                       input=f"label: dos\nstart={DATA_START}, size={total - DATA_START}, type=42\n".encode(),
                       check=True, capture_output=True)
        data_start, data_sectors, ph_at = DATA_START, db_start - DATA_START, 6
    else:  # the database fills the metadata partition, the PRIVHEAD in its last sector
        db_start, data_start = 34, 4096
        data_sectors = total - 34 - data_start
        subprocess.run(["sgdisk", "-o", "-a", "1", f"-n1:{db_start}:{db_start + DB_SECTORS - 1}", f"-t1:{GPT_META}",
                        f"-n2:{data_start}:{data_start + data_sectors - 1}", f"-t2:{GPT_DATA}", str(path)],
                       check=True, capture_output=True)
        ph_at = db_start + DB_SECTORS - 1
    db = _database(layout)
    with open(path, "r+b") as f:
        f.seek(db_start * SECTOR)
        f.write(db)
        f.seek(ph_at * SECTOR)
        f.write(privhead(data_start, data_sectors, db_start, layout.group))
    return data_start * SECTOR
