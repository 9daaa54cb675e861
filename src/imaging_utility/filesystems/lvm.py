"""LVM2 physical volumes: the label, the text metadata, and each logical volume as a ``BlockSource``.

Spec: lvmteam/lvm2 ``lib/label/label.c``, ``lib/format_text/{layout.h,format-text.c,import_vsn1.c}``
(label, metadata areas and their circular buffer, checksums, the volume-group text), as
summarised in ``shared/reference/xfs-btrfs-lvm.md`` §3.  The metadata copy with the highest
``seqno`` whose checksums are valid wins.  Sizes in the text are 512-byte sectors.

A logical volume (LV) is readable here when every segment is ``striped`` (linear is one stripe)
on this physical volume (PV); thin, snapshot, RAID, cache and LVs spanning several PVs are not
(``unreadable_reason`` says why); ``lvm_source.py`` reads an LV's bytes.  Damaged metadata — bad
checksums, a syntax error, a segment past the PV's extents, two LVs on one extent — is
``UnsupportedError`` naming the problem.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from . import c_lvm as c
from .lvm_text import MetadataSyntaxError, parse

_HINT = "image it in full without --used-only"


def fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"LVM2 physical volume found but {what}; {_HINT}")


def _dashed(uuid: str) -> str:
    """``pv_uuid`` as lvm prints it: 6-4-4-4-4-4-6 characters."""
    cuts = (0, 6, 10, 14, 18, 22, 26, 32)
    return "-".join(uuid[a:b] for a, b in itertools.pairwise(cuts))


@dataclass(frozen=True)
class PvLabel:
    sector: int
    uuid: str  # 32 characters, no dashes
    device_size: int
    data_areas: tuple[tuple[int, int], ...]
    metadata_areas: tuple[tuple[int, int], ...]

    @property
    def serial(self) -> str:
        return _dashed(self.uuid)


def _locns(data: bytes, pos: int, what: str, sector: int) -> tuple[tuple[tuple[int, int], ...], int]:
    out: list[tuple[int, int]] = []
    while True:
        if pos + c.DISK_LOCN.size > len(data) or len(out) > c.MAX_LOCNS:
            raise UnsupportedError(f"LVM2 label in sector {sector} is damaged: its {what} list does not end")
        off, size = c.DISK_LOCN.unpack_from(data, pos)
        pos += c.DISK_LOCN.size
        if not off:
            return tuple(out), pos
        out.append((off, size))


def probe(source: BlockSource) -> PvLabel | None:
    """The PV label in the first four sectors; ``None`` without one, ``UnsupportedError`` if damaged."""
    head = read_at(source, 0, c.LABEL_SCAN_SECTORS * c.SECTOR)
    for i in range(c.LABEL_SCAN_SECTORS):
        sec = head[i * c.SECTOR : (i + 1) * c.SECTOR]
        if sec[:8] != c.LABEL_ID or len(sec) < c.SECTOR:
            continue
        _, sector_xl, crc, offset_xl, ltype = c.LABEL_HEADER.unpack_from(sec)
        bad = None
        if c.calc_crc(sec[c.LABEL_CRC_FROM :]) != crc:
            bad = "checksum mismatch"
        elif sector_xl != i or ltype != c.LABEL_TYPE or not 32 <= offset_xl <= c.SECTOR - c.PV_HEADER.size:
            bad = f"sector {sector_xl}, type {ltype!r}, header offset {offset_xl}"
        if bad:
            raise UnsupportedError(f"LVM2 label in sector {i} is damaged: {bad}")
        uuid, device_size = c.PV_HEADER.unpack_from(sec, offset_xl)
        data_areas, pos = _locns(sec, offset_xl + c.PV_HEADER.size, "data area", i)
        meta_areas, _ = _locns(sec, pos, "metadata area", i)
        return PvLabel(i, uuid.decode("ascii", "replace"), device_size, data_areas, meta_areas)
    return None


@dataclass(frozen=True)
class PhysicalVolume:
    name: str  # "pv0" in the metadata
    uuid: str  # with dashes, as in the metadata
    pe_start: int  # bytes
    pe_count: int


@dataclass(frozen=True)
class Segment:
    start: int  # byte offset in the LV
    length: int
    type: str
    stripes: tuple[tuple[str, int], ...]  # (PV name, first extent) of each stripe
    stripe_size: int  # bytes; 0 for one stripe

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    status: tuple[str, ...]
    segments: tuple[Segment, ...]
    refs: tuple[str, ...]  # other LVs this one's segments name (origin, pool, sub-LVs)

    @property
    def size(self) -> int:
        return self.segments[-1].end if self.segments else 0

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"

    @property
    def mapper_name(self) -> str:
        """The device-mapper name (``vg-lv``, dashes inside names doubled), used for export file names."""
        return f"{self.vg.replace('-', '--')}-{self.name.replace('-', '--')}"


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    seqno: int
    extent_size: int  # bytes
    pvs: dict[str, PhysicalVolume]
    lvs: tuple[LogicalVolume, ...]
    this_pv: str

    def referenced(self) -> set[str]:
        return {r for lv in self.lvs for r in lv.refs}

    def get(self, name: str) -> LogicalVolume:
        """An LV by ``VG/LV``, ``LV`` or its mapper name; ``NotFoundError`` lists them."""
        from ..errors import NotFoundError

        for lv in self.lvs:
            if name in (lv.full_name, lv.name, lv.mapper_name):
                return lv
        names = ", ".join(lv.full_name for lv in self.lvs if "VISIBLE" in lv.status) or "none"
        raise NotFoundError(f"logical volume {name} not found in volume group {self.name} (volumes: {names})")


def _metadata_copy(source: BlockSource, offset: int, size: int) -> str | None:
    """The text of one metadata area, checked; ``None`` for an empty or ignored area."""
    where = f"metadata area at offset {offset:#x}"
    if size < c.MDA_HEADER_SIZE * 2 or offset + size > source.size:
        raise fail(f"its {where} ({size} bytes) does not fit the source")
    hdr = read_at(source, offset, c.MDA_HEADER_SIZE)
    crc, magic, version, start, area = c.MDA_HEADER.unpack_from(hdr)
    if magic != c.MDA_MAGIC or version != 1 or start != offset or area != size:
        raise fail(f"its {where} has a bad header (magic {magic!r}, version {version}, start {start:#x})")
    if c.calc_crc(hdr[c.MDA_CRC_FROM :]) != crc:
        raise fail(f"its {where} header fails its checksum")
    rel, length, text_crc, flags = c.RAW_LOCN.unpack_from(hdr, c.MDA_HEADER.size)
    if not length or flags & c.RAW_LOCN_IGNORED:
        return None
    if length > min(c.MAX_METADATA_TEXT, size - c.MDA_HEADER_SIZE) or not c.MDA_HEADER_SIZE <= rel < size:
        raise fail(f"its {where} claims {length} bytes of text at {rel:#x}")
    first = min(length, size - rel)  # the text is a circular buffer after the header sector
    text = read_at(source, offset + rel, first) + read_at(source, offset + c.MDA_HEADER_SIZE, length - first)
    if c.calc_crc(text) != text_crc:
        raise fail(f"the metadata text in its {where} fails its checksum")
    return text.rstrip(b"\0").decode("utf-8", "surrogateescape")


def _int(d: dict[str, Any], key: str, where: str, low: int = 0) -> int:
    v = d.get(key)
    if not isinstance(v, int) or v < low or v >= 1 << 62:
        raise fail(f"{where} has {key} = {v!r}")
    return v


def _segments(lv: dict[str, Any], vg: str, name: str, extent: int, pvs: dict[str, PhysicalVolume]) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for key in sorted((k for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)),
                      key=lambda k: int(k[7:]) if k[7:].isdigit() else -1):
        seg = lv[key]
        where = f"LV {vg}/{name} {key}"
        first, count = _int(seg, "start_extent", where), _int(seg, "extent_count", where, 1)
        if first * extent != pos:
            raise fail(f"{where} starts at extent {first}, expected {pos // extent}")
        stype = seg.get("type")
        stripes: list[tuple[str, int]] = []
        size = 0
        if stype == "striped":
            n = _int(seg, "stripe_count", where, 1)
            raw = seg.get("stripes")
            if not isinstance(raw, list) or len(raw) != 2 * n or count % n:
                raise fail(f"{where} has {n} stripes but lists {raw!r}")
            if n > 1:
                size = _int(seg, "stripe_size", where, 1) * c.SECTOR
                if extent % size:
                    raise fail(f"{where} has stripe_size {size} bytes, not a divisor of the extent size")
            for pv, pe in zip(raw[::2], raw[1::2], strict=True):
                if pv not in pvs or not isinstance(pe, int) or pe < 0:
                    raise fail(f"{where} names stripe {pv!r} extent {pe!r}")
                if pe + count // n > pvs[pv].pe_count:
                    raise fail(f"{where} lies beyond its PV (extents {pe}..{pe + count // n - 1} of "
                               f"{pvs[pv].pe_count})")
                stripes.append((pv, pe))
        out.append(Segment(pos, count * extent, str(stype), tuple(stripes), size))
        pos += count * extent
    return out


def _refs(lv: dict[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for v in lv.values():
        if isinstance(v, dict):
            for key, val in v.items():
                if key == "stripes":
                    continue
                vals = val if isinstance(val, list) else [val]
                names.extend(x for x in vals if isinstance(x, str))
    return tuple(names)


def read_vg(source: BlockSource, label: PvLabel) -> VolumeGroup:
    """The volume group this PV belongs to, from its newest valid metadata copy."""
    copies: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    for off, size in label.metadata_areas:
        try:
            got = _metadata_copy(source, off, size)
            if got is None:
                continue
            tree = parse(got)
        except MetadataSyntaxError as e:
            errors.append(f"its metadata text at offset {off:#x} is malformed: {e}")
            continue
        except UnsupportedError as e:
            errors.append(str(e))
            continue
        groups = [(k, v) for k, v in tree.items() if isinstance(v, dict)]
        if len(groups) != 1:
            errors.append(f"its metadata at offset {off:#x} holds {len(groups)} volume groups")
            continue
        seqno = groups[0][1].get("seqno")
        copies.append((seqno if isinstance(seqno, int) else -1, {**groups[0][1], "name": groups[0][0]}))
    if not copies:
        if errors:
            raise UnsupportedError(errors[0])
        raise fail("it holds no volume group metadata (a PV in no VG)")
    vgd = max(copies, key=lambda t: t[0])[1]
    return _build_vg(vgd, label, source.size)


def _build_vg(vgd: dict[str, Any], label: PvLabel, source_size: int) -> VolumeGroup:
    vg = str(vgd["name"])
    extent = _int(vgd, "extent_size", f"VG {vg}", 1) * c.SECTOR
    pvs: dict[str, PhysicalVolume] = {}
    this = None
    for pname, pv in (vgd.get("physical_volumes") or {}).items():
        if not isinstance(pv, dict):
            continue
        where = f"PV {pname} of VG {vg}"
        pvs[pname] = PhysicalVolume(pname, str(pv.get("id", "")), _int(pv, "pe_start", where) * c.SECTOR,
                                    _int(pv, "pe_count", where))
        if str(pv.get("id", "")).replace("-", "") == label.uuid:
            this = pname
    if this is None:
        raise fail(f"the metadata of VG {vg} does not list this PV ({label.serial})")
    mine = pvs[this]
    end = mine.pe_start + mine.pe_count * extent
    if end > max(label.device_size, 0) or end > source_size:
        raise fail(f"its extents end at byte {end}, beyond the device ({min(label.device_size, source_size)} bytes)")
    lvs = []
    for name, lvd in (vgd.get("logical_volumes") or {}).items():
        if isinstance(lvd, dict):
            status = tuple(str(s) for s in lvd.get("status", []) if isinstance(s, str))
            lvs.append(LogicalVolume(vg, name, status, tuple(_segments(lvd, vg, name, extent, pvs)), _refs(lvd)))
    _check_overlaps(lvs, this, extent)
    return VolumeGroup(vg, _int(vgd, "seqno", f"VG {vg}"), extent, pvs, tuple(lvs), this)


def _check_overlaps(lvs: list[LogicalVolume], pv: str, extent: int) -> None:
    owners: list[tuple[int, int, str]] = []
    for lv in lvs:
        for seg in lv.segments:
            per = seg.length // extent // max(1, len(seg.stripes))
            owners.extend((pe, pe + per, lv.full_name) for name, pe in seg.stripes if name == pv)
    owners.sort()
    end, holder = -1, ""
    for start, stop, name in owners:
        if start < end:
            raise fail(f"LVs {holder} and {name} both claim extent {start} of this PV")
        if stop > end:
            end, holder = stop, name


def pv_pieces(vg: VolumeGroup, lv: LogicalVolume) -> list[tuple[int, int]]:
    """Byte ranges of this PV that ``lv`` owns."""
    pv = vg.pvs[vg.this_pv]
    out: list[tuple[int, int]] = []
    for seg in lv.segments:
        per = seg.length // max(1, len(seg.stripes))
        out.extend((pv.pe_start + pe * vg.extent_size, per) for name, pe in seg.stripes if name == vg.this_pv)
    return out


def unreadable_reason(vg: VolumeGroup, lv: LogicalVolume) -> str | None:
    """Why ``lv``'s contents cannot be read as one volume from this PV, or ``None``."""
    kinds = {s.type for s in lv.segments} - {"striped"}
    if kinds:
        return f"a {'/'.join(sorted(kinds))} volume"
    if lv.name in vg.referenced():
        return "used by another LV (snapshot origin, pool or RAID part)"
    if "VISIBLE" not in lv.status:
        return "a hidden LV (part of another one)"
    if any(name != vg.this_pv for s in lv.segments for name, _ in s.stripes):
        return "spread over several PVs"
    if not lv.segments:
        return "empty"
    return None
