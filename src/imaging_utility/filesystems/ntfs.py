"""NTFS: volume parameters from the boot sector, used clusters from ``$Bitmap``.

Spec: libyal/libfsntfs "New Technologies File System (NTFS)" (volume header,
MFT entry, fix-ups, attributes, data runs, allocation bitmap), as summarised in
``shared/reference/ntfs-bitmap-and-extfs.md`` §1.  ``$Bitmap`` is MFT record 6;
its unnamed ``$DATA`` holds one bit per cluster, LSB-first, 1 = in use.

Parsed by hand over ``struct`` rather than through dissect.ntfs so that every
read goes through ``BlockSource.readinto_at``, memory stays bounded on huge
volumes, and every failure names the offset it happened at.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from ._bitmap import RunList, read_bitmap, set_runs

OEM_ID = b"NTFS    "

# Boot sector (offsets 0x0B..0x50): BytesPerSector, SectorsPerCluster, then NumberSectors at 0x28,
# MftStartLcn, Mft2StartLcn, ClustersPerFileRecordSegment (signed), ClustersPerIndexBuffer, serial.
BOOT_SECTOR = struct.Struct("<3s8sHB26xQQQb3xb3xQ")
# MFT record header: signature, usa offset, usa count, lsn, sequence, link count, attrs offset,
# flags, bytes in use, bytes allocated.
FILE_RECORD = struct.Struct("<4sHHQHHHHII")
# Attribute header common part: type, length, non-resident, name length, name offset, flags.
ATTR_HEADER = struct.Struct("<IIBBHH")
# Resident part (at 0x10): value length, value offset.
ATTR_RESIDENT = struct.Struct("<IH")
# Non-resident part (at 0x10): start VCN, last VCN, runlist offset, compression unit, 4 pad,
# allocated size, data size, initialized size.
ATTR_NONRESIDENT = struct.Struct("<QQHH4xQQQ")

FILE_RECORD_IN_USE = 0x0001
ATTR_VOLUME_NAME = 0x60
ATTR_DATA = 0x80
ATTR_END = 0xFFFFFFFF
FILE_MFT = 0
FILE_VOLUME = 3
FILE_BITMAP = 6
FIXUP_STRIDE = 512
BOOT_FILE_SIZE = 8192  # $Boot: the first 16 sectors of the volume


@dataclass(frozen=True)
class NtfsBoot:
    bytes_per_sector: int
    sectors_per_cluster: int
    number_sectors: int
    mft_lcn: int
    mftmirr_lcn: int
    record_size: int
    serial: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def total_clusters(self) -> int:
        return self.number_sectors // self.sectors_per_cluster

    @property
    def volume_size(self) -> int:
        """Bytes the volume spans, including the backup boot sector right after NumberSectors."""
        return (self.number_sectors + 1) * self.bytes_per_sector

    @classmethod
    def from_bytes(cls, sector: bytes) -> NtfsBoot | None:
        """Parse a boot sector; ``None`` without the NTFS OEM id, ``UnsupportedError`` when it is damaged."""
        if len(sector) < 512 or sector[3:11] != OEM_ID:
            return None
        (_, _, bps, spc_raw, nsec, mft, mirr, rec_raw, _, serial) = BOOT_SECTOR.unpack_from(sector)
        spc = 1 << (256 - spc_raw) if spc_raw > 0x80 else spc_raw
        bad = None
        if sector[510:512] != b"\x55\xaa":
            bad = f"boot signature {sector[510:512].hex()} (expected 55aa)"
        elif bps not in (256, 512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
            bad = f"BytesPerSector {bps} / SectorsPerCluster {spc_raw:#x}"
        elif nsec == 0 or not (0 < mft < nsec // spc) or not (0 < mirr < nsec // spc):
            bad = f"NumberSectors {nsec}, MftStartLcn {mft}, Mft2StartLcn {mirr}"
        elif not (-31 <= rec_raw <= -9 or 0 < rec_raw <= 8):
            bad = f"ClustersPerFileRecordSegment {rec_raw}"
        if bad:
            raise UnsupportedError(f"NTFS boot sector at offset 0 is damaged: {bad}")
        rec = rec_raw * bps * spc if rec_raw > 0 else 1 << -rec_raw
        return cls(bps, spc, nsec, mft, mirr, rec, serial)


class _Damaged(Exception):
    """A structure failed validation; the message says which, and at what offset."""


def _fail(what: str) -> UnsupportedError:
    return UnsupportedError(f"NTFS boot sector found but {what}; image it in full without --used-only")


def _apply_fixups(rec: bytearray, offset: int, magic: bytes = b"FILE") -> None:
    """Check and undo the update sequence of a multi-sector record (an MFT record, or an index block
    with ``magic`` ``b"INDX"``)."""
    sig, usa_ofs, usa_count = FILE_RECORD.unpack_from(rec)[:3]
    what = "the MFT record" if magic == b"FILE" else "the index block"
    if sig != magic:
        raise _Damaged(f"{what} at offset {offset:#x} has signature {sig!r} (expected {magic!r})")
    if usa_count < 1 or usa_ofs + 2 * usa_count > len(rec) or (usa_count - 1) * FIXUP_STRIDE > len(rec):
        raise _Damaged(f"{what} at offset {offset:#x} has a bad update sequence ({usa_ofs}, {usa_count})")
    usn = rec[usa_ofs : usa_ofs + 2]
    for j in range(usa_count - 1):
        end = (j + 1) * FIXUP_STRIDE
        if rec[end - 2 : end] != usn:
            raise _Damaged(f"{what} at offset {offset:#x} fails its fixup check at byte {end - 2}")
        rec[end - 2 : end] = rec[usa_ofs + 2 + 2 * j : usa_ofs + 4 + 2 * j]


def _decode_runlist(data: bytes, pos: int, where: int) -> list[tuple[int | None, int]]:
    """Data runs as ``(lcn or None for sparse, cluster count)``."""
    runs: list[tuple[int | None, int]] = []
    lcn = 0
    while pos < len(data) and data[pos]:
        head = data[pos]
        nlen, noff = head & 0x0F, head >> 4
        if nlen == 0 or nlen > 8 or noff > 8 or pos + 1 + nlen + noff > len(data):
            raise _Damaged(f"the runlist at offset {where + pos:#x} has a bad header byte {head:#04x}")
        count = int.from_bytes(data[pos + 1 : pos + 1 + nlen], "little")
        if noff:
            lcn += int.from_bytes(data[pos + 1 + nlen : pos + 1 + nlen + noff], "little", signed=True)
            runs.append((lcn, count))
        else:
            runs.append((None, count))
        pos += 1 + nlen + noff
    return runs


@dataclass(frozen=True)
class DataAttr:
    """The unnamed ``$DATA`` of a record: resident bytes, or a runlist with its data size."""

    resident: bytes | None
    runs: list[tuple[int | None, int]]
    start_vcn: int
    data_size: int


def _read_record(source: BlockSource, boot: NtfsBoot, offset: int) -> bytearray:
    if offset + boot.record_size > source.size:
        raise _Damaged(f"the MFT record at offset {offset:#x} lies past the end of the source")
    rec = bytearray(boot.record_size)
    source.readinto_at(offset, rec)
    _apply_fixups(rec, offset)
    return rec


def _unnamed_data(rec: bytearray, offset: int, want: int = ATTR_DATA) -> DataAttr:
    flags = FILE_RECORD.unpack_from(rec)[7]
    attr_ofs = FILE_RECORD.unpack_from(rec)[6]
    if not flags & FILE_RECORD_IN_USE:
        raise _Damaged(f"the MFT record at offset {offset:#x} is not in use")
    pos = attr_ofs
    while pos + ATTR_HEADER.size <= len(rec):
        atype, alen, nonres, name_len, _, _ = ATTR_HEADER.unpack_from(rec, pos)
        if atype == ATTR_END:
            break
        if alen < ATTR_HEADER.size or pos + alen > len(rec):
            raise _Damaged(f"attribute {atype:#x} at offset {offset + pos:#x} has bad length {alen}")
        if atype == want and name_len == 0:
            attr = bytes(rec[pos : pos + alen])
            if not nonres:
                vlen, vofs = ATTR_RESIDENT.unpack_from(attr, 0x10)
                if vofs + vlen > alen:
                    raise _Damaged(f"resident $DATA at offset {offset + pos:#x} overflows its attribute")
                return DataAttr(attr[vofs : vofs + vlen], [], 0, vlen)
            if alen < 0x10 + ATTR_NONRESIDENT.size:
                raise _Damaged(f"non-resident $DATA at offset {offset + pos:#x} is truncated")
            start_vcn, _, rl_ofs, _, _, data_size, _ = ATTR_NONRESIDENT.unpack_from(attr, 0x10)
            return DataAttr(None, _decode_runlist(attr, rl_ofs, offset + pos), start_vcn, data_size)
        pos += alen
    raise _Damaged(f"the MFT record at offset {offset:#x} has no unnamed attribute {want:#x}")


def _vcn_to_offset(runs: list[tuple[int | None, int]], start_vcn: int, vcn: int, cluster: int) -> int | None:
    v = start_vcn
    for lcn, count in runs:
        if v <= vcn < v + count:
            return None if lcn is None else (lcn + vcn - v) * cluster
        v += count
    return None


def _bitmap_storage(data: DataAttr, boot: NtfsBoot, need: int, where: int) -> list[tuple[int, int]]:
    if data.data_size < need:
        raise _Damaged(f"its $DATA (record at {where:#x}) holds {data.data_size} bytes, {need} needed")
    if data.start_vcn != 0:
        raise _Damaged(f"its $DATA (record at {where:#x}) starts at VCN {data.start_vcn} (attribute list)")
    cs = boot.cluster_size
    out: list[tuple[int, int]] = []
    have = 0
    for lcn, count in data.runs:
        if have >= need:
            break
        if lcn is None or lcn < 0 or lcn + count > boot.total_clusters:
            raise _Damaged(f"its $DATA (record at {where:#x}) has an invalid run (lcn {lcn}, {count} clusters)")
        out.append((lcn * cs, count * cs))
        have += count * cs
    if have < need:
        raise _Damaged(f"its runlist (record at {where:#x}) covers {have} bytes, {need} needed")
    return out


def probe(source: BlockSource) -> NtfsBoot | None:
    return NtfsBoot.from_bytes(read_at(source, 0, 512))


def _record_offset(source: BlockSource, boot: NtfsBoot, number: int) -> int:
    """Byte offset of MFT record ``number``, resolved through ``$MFT``'s own runlist."""
    cs = boot.cluster_size
    mft_off = boot.mft_lcn * cs
    try:
        mft_data = _unnamed_data(_read_record(source, boot, mft_off), mft_off)
    except _Damaged as e:
        raise _fail(f"$MFT is unreadable: {e}") from None
    vcn, within = divmod(number * boot.record_size, cs)
    base = _vcn_to_offset(mft_data.runs, mft_data.start_vcn, vcn, cs)
    if base is None or mft_data.resident is not None:
        raise _fail(f"$MFT's runlist (record at {mft_off:#x}) does not map MFT record {number}")
    return base + within


def volume_label(source: BlockSource, boot: NtfsBoot) -> str | None:
    """The name in ``$Volume``'s ``$VOLUME_NAME``; ``None`` when empty or unreadable."""
    try:
        off = _record_offset(source, boot, FILE_VOLUME)
        name = _unnamed_data(_read_record(source, boot, off), off, ATTR_VOLUME_NAME).resident
    except (_Damaged, UnsupportedError):
        return None
    return name.decode("utf-16-le", "replace") or None if name else None


def _bitmap_attr(source: BlockSource, boot: NtfsBoot) -> tuple[DataAttr, int]:
    """``$Bitmap``'s unnamed ``$DATA`` and the offset of its MFT record."""
    rec_off = _record_offset(source, boot, FILE_BITMAP)
    try:
        return _unnamed_data(_read_record(source, boot, rec_off), rec_off), rec_off
    except _Damaged as e:
        raise _fail(f"$Bitmap is unreadable: {e}") from None


def used_ranges(source: BlockSource, boot: NtfsBoot) -> Iterator[tuple[int, int]]:
    """Used clusters from ``$Bitmap`` plus the byte ranges always kept (boot, backup boot, tail); the volume
    must have been cleanly shut down (``ntfs_state``), or its ``$Bitmap`` may be older than its log."""
    from .ntfs_state import volume_state

    unclean = volume_state(source, boot)
    if unclean:
        raise _fail(unclean)
    cs = boot.cluster_size
    data, rec_off = _bitmap_attr(source, boot)
    need = (boot.total_clusters + 7) // 8
    used = RunList()
    try:
        if data.resident is not None:
            if len(data.resident) < need:
                raise _Damaged(f"its resident $DATA (record at {rec_off:#x}) holds {len(data.resident)} bytes")
            used.extend(set_runs(data.resident, 0, boot.total_clusters))
        else:
            read_bitmap(source, _bitmap_storage(data, boot, need, rec_off), boot.total_clusters, used)
    except (_Damaged, ValueError) as e:
        raise _fail(f"$Bitmap is unreadable: {e}") from None
    # A bitmap that does not mark the clusters of $MFT and $MFTMirr is not the real one.
    for name, lcn in (("$MFT", boot.mft_lcn), ("$MFTMirr", boot.mftmirr_lcn)):
        if not used.contains(lcn):
            raise _fail(f"$Bitmap (record at {rec_off:#x}) marks {name}'s cluster {lcn} free")
    always = [
        (0, BOOT_FILE_SIZE),
        (boot.number_sectors * boot.bytes_per_sector, boot.bytes_per_sector),  # backup boot sector
        (boot.total_clusters * cs, boot.volume_size - boot.total_clusters * cs),  # partial last cluster
    ]
    return chain(always, used.byte_ranges(cs))
