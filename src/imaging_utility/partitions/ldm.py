"""Windows dynamic disks (LDM): the volumes of the disk group and where each lies on this disk.

A dynamic disk's partition table holds one partition of type 0x42 (MBR) or an LDM metadata and an LDM
data partition (GPT); the volumes inside are laid out by the LDM database, a ``PRIVHEAD`` (sector 6 on
MBR, the metadata partition's last sector on GPT), a ``TOCBLOCK`` two sectors into the database and a
``VMDB`` followed by fixed-size ``VBLK`` entries holding the disk group's volume, component, partition
and disk records (big-endian; variable-length numbers and strings with a length byte in front).
Layout as read by libldm (``src/ldm.c``) and Linux ``block/partitions/ldm.c``; every size, count and
offset read here is a claim checked against the database's and the disk's real bounds.

A volume is readable from this disk alone when one of its components (a mirror has two) is a
concatenation whose partitions all lie on this disk: a simple volume, a spanned volume whose pieces are
all here, or one plex of a mirror.  Striped and RAID-5 volumes, and spanned ones reaching other disks,
are not: ``LdmVolume.why_not`` says so.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass

from ..blocks import BlockSource, read_at
from ..errors import NotFoundError, UnsupportedError
from .table import PartitionTable

PRIVHEAD = struct.Struct(">8sIHHQQQQ64s64s64s32sH9sQQQQ")  # up to the database's size (315 bytes)
TOCBLOCK_BITMAP = struct.Struct(">8sHQQQ")  # name, flags, start, size (sectors into the database), flags
TOCBLOCK_FIRST_BITMAP = 36
VMDB = struct.Struct(">4sIIIHHH31s64sQQIIII")  # ... committed sequence, pending sequence, committed counts
VBLK_HEAD = struct.Struct(">4sIIHH")  # magic, sequence, record id, entry, entries in the record
RECORD_HEAD = struct.Struct(">HBBI")  # status, flags, revision << 4 | type, size
GPT_LDM_METADATA = "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3"
MBR_LDM = "0x42"
MAX_DATABASE = 8 << 20  # Windows writes 1 MiB (2048 sectors); anything far larger is not a database
MAX_RECORDS = 65536  # a 1 MiB database of 128-byte VBLKs holds at most 8,192
MAX_RECORD_ENTRIES = 64  # VBLK entries one record may span
COMPONENT_KINDS = {1: "striped", 2: "spanned", 3: "raid"}

__all__ = ["LdmDatabase", "LdmVolume", "read_ldm"]


@dataclass(frozen=True)
class LdmPart:
    """A piece of a component ("subdisk"): ``length`` bytes at ``start`` of the disk's data area."""

    name: str
    disk_id: int
    start: int  # bytes from the start of the disk's data area (the PRIVHEAD's logical disk start)
    length: int
    volume_offset: int  # bytes into its component
    index: int


@dataclass(frozen=True)
class LdmComponent:
    kind: str  # "spanned" (a concatenation: simple, spanned or one plex of a mirror), "striped", "raid"
    parts: tuple[LdmPart, ...]  # in index order
    chunk_size: int


@dataclass(frozen=True)
class LdmVolume:
    name: str
    kind: str  # "simple", "spanned", "striped", "mirrored", "raid5"
    size: int
    components: tuple[LdmComponent, ...]
    why_not: str | None  # why it cannot be read from this disk alone; None: ``extents`` is its layout
    extents: tuple[tuple[int, int, int], ...]  # (volume offset, disk offset, length), when readable


@dataclass(frozen=True)
class LdmDatabase:
    group: str
    disk_name: str
    data_start: int  # bytes from the start of the disk
    data_size: int
    volumes: tuple[LdmVolume, ...]
    pieces: tuple[tuple[int, int, str], ...]  # (disk offset, length, volume name) of every part on this disk

    def get(self, name: str) -> LdmVolume:
        group, _, want = name.rpartition("/")
        for v in self.volumes:
            if v.name == want and group in ("", self.group):
                return v
        names = ", ".join(f"{self.group}/{v.name}" for v in self.volumes) or "none"
        raise NotFoundError(f"no dynamic volume {name!r} in disk group {self.group!r} (volumes: {names})")


class _Bad(UnsupportedError):
    pass


def _fail(what: str) -> _Bad:
    return _Bad(f"its LDM database is damaged or not one this program reads: {what}")


class _Fields:
    """A cursor over one record's bytes; every read checks it stays inside the record."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _fail(f"a record ends {self.pos + n - len(self.data)} bytes early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        self.take(n)

    def byte(self) -> int:
        return self.take(1)[0]

    def number(self, limit: int = 8) -> int:
        n = self.byte()
        if n > limit:
            raise _fail(f"a {n}-byte number where at most {limit} bytes fit")
        return int.from_bytes(self.take(n), "big")

    def text(self) -> str:
        return self.take(self.byte()).decode("latin-1").split("\0", 1)[0]

    def be64(self) -> int:
        return int.from_bytes(self.take(8), "big")


def _privhead_offset(source: BlockSource, table: PartitionTable) -> int | None:
    ss = table.sector_size
    if table.scheme == "mbr" and table.partitions and table.partitions[0].type_id.lower() == MBR_LDM:
        return 6 * ss
    if table.scheme == "gpt":
        for p in table.partitions:
            if p.type_id.lower() == GPT_LDM_METADATA:
                return p.offset + p.length - ss
    return None


def read_ldm(source: BlockSource, table: PartitionTable) -> LdmDatabase | None:
    """The LDM database of the dynamic disk ``source`` with partition table ``table``; None when the table
    is not a dynamic disk's.  Raises ``UnsupportedError`` naming what is wrong with a database that is
    there but damaged, inconsistent or of a kind not read here."""
    at = _privhead_offset(source, table)
    if at is None:
        return None
    ss = table.sector_size
    if at + PRIVHEAD.size > source.size:
        raise _fail(f"its PRIVHEAD (byte {at}) lies past the disk's end")
    (magic, _seq, _major, _minor, _ts, _num, _s1, _s2, disk_guid, _host, _group_guid, group_name, _u1, _pad,
     data_start, data_size, config_start, config_size) = PRIVHEAD.unpack(read_at(source, at, PRIVHEAD.size))
    if magic != b"PRIVHEAD":
        raise _fail(f"no PRIVHEAD at byte {at}")
    data_start, data_size, config_start, config_size = (v * ss for v in (data_start, data_size, config_start,
                                                                          config_size))
    if data_start + data_size > source.size or data_size == 0:
        raise _fail(f"its data area ({data_size} bytes at {data_start}) does not fit the disk ({source.size} bytes)")
    if not 3 * ss <= config_size <= MAX_DATABASE or config_start + config_size > source.size:
        raise _fail(f"its database ({config_size} bytes at {config_start}) does not fit the disk")
    config = read_at(source, config_start, config_size)
    this_guid = _guid_text(disk_guid)
    group, disks, volumes, comps, parts = _records(config, ss)
    this = [i for i, g in disks.items() if g[1] == this_guid]
    if len(this) != 1:
        raise _fail(f"this disk ({this_guid}) is not one of the group's {len(disks)} disks")
    this_id = this[0]
    for cid, (parent, _, _, _) in comps.items():
        if parent not in volumes:
            raise _fail(f"component {cid} belongs to volume {parent}, which the database does not hold")
    for parent, p in parts.values():
        if parent not in comps:
            raise _fail(f"partition {p.name!r} belongs to component {parent}, which the database does not hold")
    pieces: list[tuple[int, int, str]] = []
    out: list[LdmVolume] = []
    for vid, (name, vtype, n_comps, size) in volumes.items():
        mine = [c for c in comps.values() if c[0] == vid]
        if len(mine) != n_comps:
            raise _fail(f"volume {name!r} should have {n_comps} components, {len(mine)} were found")
        components: list[LdmComponent] = []
        for cid, (_, kind, n_parts, chunk) in ((k, v) for k, v in comps.items() if v[0] == vid):
            ps = sorted((p for p in parts.values() if p[0] == cid), key=lambda p: p[1].index)
            if len(ps) != n_parts:
                raise _fail(f"a component of volume {name!r} should have {n_parts} partitions, {len(ps)} were found")
            for _, p in ps:
                if p.disk_id not in disks:
                    raise _fail(f"partition {p.name!r} lies on disk {p.disk_id}, which the group does not hold")
                if p.disk_id == this_id:
                    if p.start + p.length > data_size:
                        raise _fail(f"partition {p.name!r} ({p.length} bytes at {p.start}) lies past the data area "
                                    f"({data_size} bytes)")
                    pieces.append((data_start + p.start, p.length, name))
            components.append(LdmComponent(kind, tuple(p for _, p in ps), chunk))
        out.append(_volume(name, vtype, size, components, this_id, data_start, disks))
    pieces.sort()
    for (a, n, va), (b, _, vb) in itertools.pairwise(pieces):
        if a + n > b:
            raise _fail(f"volumes {va!r} and {vb!r} overlap on this disk")
    return LdmDatabase(group or group_name.split(b"\0", 1)[0].decode("latin-1"), disks[this_id][0], data_start,
                       data_size, tuple(out), tuple(pieces))


def _guid_text(raw: bytes) -> str:
    text = raw.split(b"\0", 1)[0].decode("latin-1").strip().lower()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _fail(f"the PRIVHEAD's disk GUID {text!r} is not a GUID") from None


def _volume(name: str, vtype: int, size: int, components: list[LdmComponent], this_id: int, data_start: int,
            disks: dict[int, tuple[str, str]]) -> LdmVolume:
    kinds = {c.kind for c in components}
    if vtype == 4 or "raid" in kinds:
        kind = "raid5"
    elif "striped" in kinds:
        kind = "striped"
    elif len(components) > 1:
        kind = "mirrored"
    else:
        kind = "spanned" if len(components[0].parts) > 1 else "simple"
    why: str | None = None
    extents: tuple[tuple[int, int, int], ...] = ()
    if kind in ("raid5", "striped"):
        why = f"a {'RAID-5' if kind == 'raid5' else 'striped'} volume: its data is spread over its disks"
    else:
        here = [c for c in components if all(p.disk_id == this_id for p in c.parts)]
        if not here:
            others = sorted({disks[p.disk_id][0] for c in components for p in c.parts if p.disk_id != this_id})
            why = f"a {kind} volume with pieces on other disks ({', '.join(others)})"
        else:
            extents, why = _concat(here[0], size, data_start)
    return LdmVolume(name, kind, size, tuple(components), why, extents)


def _concat(comp: LdmComponent, size: int, data_start: int) -> tuple[tuple[tuple[int, int, int], ...], str | None]:
    pos = 0
    out: list[tuple[int, int, int]] = []
    for p in comp.parts:
        if p.volume_offset != pos:
            return (), f"its pieces do not follow each other (piece {p.name!r} at volume byte {p.volume_offset}, " \
                       f"expected {pos})"
        out.append((pos, data_start + p.start, p.length))
        pos += p.length
    if pos < size:
        return (), f"its pieces hold {pos} bytes of its {size}"
    return tuple(out), None


_Disk = tuple[str, str]  # name, GUID
_Vol = tuple[str, int, int, int]  # name, type (3 gen, 4 raid5), components, size in bytes
_Comp = tuple[int, str, int, int]  # parent volume, kind, partitions, chunk size in bytes


def _records(config: bytes, ss: int) -> tuple[str, dict[int, _Disk], dict[int, _Vol], dict[int, _Comp],
                                              dict[int, tuple[int, LdmPart]]]:
    """Every committed record of the database: disk group name, disks, volumes, components, partitions."""
    toc = 2 * ss
    if config[toc : toc + 8] != b"TOCBLOCK":
        raise _fail("no TOCBLOCK two sectors into the database")
    vmdb_at = None
    for i in range(2):
        name, _f, start, _size, _f2 = TOCBLOCK_BITMAP.unpack_from(config, toc + TOCBLOCK_FIRST_BITMAP + i * 34)
        if name.split(b"\0", 1)[0] == b"config":
            vmdb_at = start * ss
    if vmdb_at is None or vmdb_at + VMDB.size > len(config) or config[vmdb_at : vmdb_at + 4] != b"VMDB":
        raise _fail("no VMDB where the TOCBLOCK says")
    (_m, _last, vblk_size, first, status, _major, _minor, _name, _guid, _committed, _pending,
     n_vol, n_comp, n_part, n_disk) = VMDB.unpack_from(config, vmdb_at)
    if not VBLK_HEAD.size + RECORD_HEAD.size < vblk_size <= 64 * 1024 or first < VMDB.size:
        raise _fail(f"VBLK size {vblk_size} or first VBLK at {first} is not possible")
    records: list[bytes] = []
    spanned: dict[int, dict[int, bytes]] = {}
    totals: dict[int, int] = {}
    at = vmdb_at + first
    while at + vblk_size <= len(config) and config[at : at + 4] == b"VBLK":
        if len(records) + len(totals) >= MAX_RECORDS:
            raise _fail(f"more than {MAX_RECORDS} VBLK records")
        _, _seq, rid, entry, total = VBLK_HEAD.unpack_from(config, at)
        body = config[at + VBLK_HEAD.size : at + vblk_size]
        at += vblk_size
        if total > 1:
            if total > MAX_RECORD_ENTRIES or entry >= total:
                raise _fail(f"VBLK entry {entry} of {total} for record {rid}")
            if totals.setdefault(rid, total) != total or entry in spanned.setdefault(rid, {}):
                raise _fail(f"record {rid} is split inconsistently")
            spanned[rid][entry] = body
        else:
            records.append(body)
    for rid, pieces in spanned.items():
        if len(pieces) != totals[rid]:
            raise _fail(f"record {rid} spans {totals[rid]} VBLK entries, {len(pieces)} were found")
        records.append(b"".join(pieces[i] for i in range(totals[rid])))
    group = ""
    disks: dict[int, _Disk] = {}
    vols: dict[int, _Vol] = {}
    comps: dict[int, _Comp] = {}
    parts: dict[int, tuple[int, LdmPart]] = {}
    for rec in records:
        _status, flags, rtype, _size = RECORD_HEAD.unpack_from(rec)
        kind, revision = rtype & 0x0F, rtype >> 4
        f = _Fields(rec, RECORD_HEAD.size)
        if kind == 0:
            continue
        rid = f.number(4)
        if kind == 1:
            vols[rid] = _volume_record(f, revision, flags, ss)
        elif kind == 2:
            comps[rid] = _component_record(f, revision, flags, ss)
        elif kind == 3:
            parts[rid] = _partition_record(f, revision, flags, ss)
        elif kind == 4:
            name = f.text()
            if revision == 3:
                guid = f.text()
            elif revision == 4:
                guid = str(uuid.UUID(bytes=f.take(16)))
            else:
                raise _fail(f"disk record revision {revision}")
            try:
                disks[rid] = (name, str(uuid.UUID(guid)))
            except ValueError:
                raise _fail(f"disk {name!r} has GUID {guid!r}") from None
        elif kind == 5:
            group = f.text()
        else:
            raise _fail(f"unknown record type {kind}")
    got = (len(vols), len(comps), len(parts), len(disks))
    if status not in (1, 2, 3) or got != (n_vol, n_comp, n_part, n_disk):
        raise _fail(f"the VMDB counts {n_vol}/{n_comp}/{n_part}/{n_disk} volume/component/partition/disk records, "
                    f"the database holds {'/'.join(map(str, got))}")
    return group, disks, vols, comps, parts


def _volume_record(f: _Fields, revision: int, flags: int, ss: int) -> _Vol:
    if revision != 5:
        raise _fail(f"volume record revision {revision}")
    name = f.text()
    f.skip(f.byte())  # "gen" or "raid5"
    f.skip(f.byte())
    f.skip(14)  # state
    vtype = f.byte()
    if vtype not in (3, 4):
        raise _fail(f"volume {name!r} of type {vtype}")
    f.skip(6)  # unknown, volume number, zeros, flags
    n_comps = f.number(4)
    f.skip(16)  # commit id, id
    size = f.number() * ss
    if not 0 < n_comps <= 32:
        raise _fail(f"volume {name!r} with {n_comps} components")
    return name, vtype, n_comps, size


def _component_record(f: _Fields, revision: int, flags: int, ss: int) -> _Comp:
    if revision != 3:
        raise _fail(f"component record revision {revision}")
    f.skip(f.byte())  # name
    f.skip(f.byte())  # state
    kind = COMPONENT_KINDS.get(f.byte())
    if kind is None:
        raise _fail("a component of an unknown type")
    f.skip(4)
    n_parts = f.number(4)
    f.skip(16)  # log commit id, zeros
    parent = f.number(4)
    f.skip(1)
    chunk = 0
    if flags & 0x10:
        chunk = f.number() * ss
        f.number(4)  # columns
    if not 0 < n_parts <= 1024:
        raise _fail(f"a component with {n_parts} partitions")
    return parent, kind, n_parts, chunk


def _partition_record(f: _Fields, revision: int, flags: int, ss: int) -> tuple[int, LdmPart]:
    if revision != 3:
        raise _fail(f"partition record revision {revision}")
    name = f.text()
    f.skip(12)  # zeros, log commit id
    start, offset = f.be64() * ss, f.be64() * ss
    size = f.number() * ss
    parent, disk = f.number(4), f.number(4)
    index = f.number(4) if flags & 0x08 else 0
    if size == 0:
        raise _fail(f"partition {name!r} is empty")
    return parent, LdmPart(name, disk, start, size, offset, index)
