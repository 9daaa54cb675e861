"""Was an NTFS volume cleanly shut down?  Its ``$Volume`` dirty flag and its ``$LogFile`` restart area.

A volume Windows did not cleanly dismount (Fast Startup or hibernation, a crash, a volume still
mounted, chkdsk scheduled) can hold changes in ``$LogFile`` that are not yet in place: its ``$Bitmap``
may mark free clusters that the log allocates, and its MFT records may be older than the log.  Used-only
imaging refuses such a volume and file reading says so.  partclone.ntfs and ntfsclone refuse a volume
marked dirty; ntfs-3g refuses to mount one read-write whose log is not clean; this checks both.

Structures (Linux ``fs/ntfs/logfile.h``, ntfs-3g ``libntfs-3g/logfile.c``, ``ntfs_check_logfile`` and
``ntfs_is_logfile_clean``): ``$LogFile`` (MFT record 2) begins with two restart pages ("RSTR", or "CHKD"
when chkdsk left them), each with an update sequence array like an MFT record's and a restart area whose
``client_in_use_list`` is ``0xFFFF`` (no client) or whose flags hold ``RESTART_VOLUME_IS_CLEAN`` on a
clean volume.  A log filled with ``0xFF`` (reset by ntfs-3g or mkntfs) is empty, so clean.  ``$Volume``
(record 3) has ``$VOLUME_INFORMATION`` (0x70) whose flags hold ``VOLUME_IS_DIRTY`` (1).  A hibernated
Windows leaves ``hiberfil.sys`` in the root starting ``hibr`` or ``HIBR`` (ntfs-3g's hibernation check).
"""

from __future__ import annotations

import struct

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError
from .ntfs import (
    FILE_VOLUME,
    FIXUP_STRIDE,
    NtfsBoot,
    _Damaged,
    _read_record,
    _record_offset,
    _unnamed_data,
    _vcn_to_offset,
)
from .ntfs_index import Undecided, first_bytes_in_root

FILE_LOGFILE = 2
HIBERFILE = "hiberfil.sys"
HIBERNATED = (b"hibr", b"HIBR")
ATTR_VOLUME_INFORMATION = 0x70
VOLUME_IS_DIRTY = 0x0001
RESTART_VOLUME_IS_CLEAN = 0x0002
LOGFILE_NO_CLIENT = 0xFFFF
# magic, usa offset, usa count, chkdsk lsn, system page size, log page size, restart area offset, minor, major
RESTART_PAGE = struct.Struct("<4sHHQIIHhh")
# current lsn, log clients, client free list, client in use list, flags
RESTART_AREA = struct.Struct("<QHHHH")
PAGE = 4096  # where the second restart page is when the first does not say (every Windows writes 4 KiB)

_UNCLEAN = ("its $LogFile is not clean (Windows did not cleanly shut it down: Fast Startup or hibernation, a "
            "crash, or it is still mounted; shut Windows down fully, or run chkdsk)")


def volume_state(source: BlockSource, boot: NtfsBoot) -> str | None:
    """``None`` when the volume was cleanly shut down, else why it was not (for a message)."""
    try:
        off = _record_offset(source, boot, FILE_VOLUME)
        info = _unnamed_data(_read_record(source, boot, off), off, ATTR_VOLUME_INFORMATION).resident
        if info is not None and len(info) >= 12 and int.from_bytes(info[10:12], "little") & VOLUME_IS_DIRTY:
            return "its $Volume is marked dirty (a check is due: run chkdsk)"
        if _hibernated(source, boot):
            return ("Windows is hibernated on it (hiberfil.sys holds a hibernation image: changes it keeps in "
                    "memory are not on the disk; resume Windows and shut it down fully)")
        return _logfile_state(source, boot)
    except _Damaged as e:
        return f"its $Volume or $LogFile cannot be read to check it was cleanly shut down ({e})"
    except UnsupportedError as e:
        return f"its $Volume or $LogFile cannot be read to check it was cleanly shut down ({_why(e)})"


def _hibernated(source: BlockSource, boot: NtfsBoot) -> bool:
    """Whether the root's ``hiberfil.sys`` begins with a hibernation signature, as ntfs-3g's
    ``ntfs_volume_check_hiberfile`` checks; False when there is none.  Read by ``ntfs_index``; a root
    index or file record it leaves undecided is looked up through dissect."""
    try:
        head = first_bytes_in_root(source, boot, HIBERFILE, 4)
    except (Undecided, UnsupportedError):
        return _hibernated_dissect(source)
    return head in HIBERNATED


def _hibernated_dissect(source: BlockSource) -> bool:
    """The same check through dissect.ntfs; False when there is no such file or it cannot be read."""
    from .dissect_ntfs import NTFS
    from .tree_stream import BlockFile

    try:
        record = NTFS(BlockFile(source)).mft.get(HIBERFILE)
        if not record.header.Flags & 0x0001 or (record.filename or "").lower() != HIBERFILE:
            return False
        with record.open() as f:
            head = f.read(4)
    except Exception:  # no such file, or dissect cannot read it: the log check still applies
        return False
    return bytes(head) in HIBERNATED


def _why(e: UnsupportedError) -> str:
    return str(e).removeprefix("NTFS boot sector found but ").split("; image it in full")[0]


def _logfile_state(source: BlockSource, boot: NtfsBoot) -> str | None:
    off = _record_offset(source, boot, FILE_LOGFILE)
    data = _unnamed_data(_read_record(source, boot, off), off)
    if data.resident is not None:
        raise _Damaged(f"its $LogFile (record at {off:#x}) is resident")

    def page(at: int, size: int) -> bytearray | None:
        if at + size > data.data_size:
            return None
        cs = boot.cluster_size
        out = bytearray()
        for pos in range(at, at + size, min(size, cs)):  # a page may span runs when clusters are small
            where = _vcn_to_offset(data.runs, data.start_vcn, pos // cs, cs)
            if where is None or where + pos % cs + min(size, cs) > source.size:
                return None
            out += read_at(source, where + pos % cs, min(size, cs))
        return out

    first = page(0, 512)
    if first is None:
        raise _Damaged(f"its $LogFile (record at {off:#x}) is shorter than a restart page")
    if first[:4] == b"\xff\xff\xff\xff":
        return None  # an empty log: reset by ntfs-3g or mkntfs, nothing to replay
    claimed = RESTART_PAGE.unpack_from(first)[4] if bytes(first[:4]) in (b"RSTR", b"CHKD") else 0
    size = claimed if 512 <= claimed <= 65536 and not claimed & (claimed - 1) else PAGE
    areas = [a for a in (_restart_area(page(at, size)) for at in (0, size)) if a is not None]
    if not areas:
        return f"its $LogFile (record at {off:#x}) has no valid restart page (damaged)"
    magic, _, in_use, flags = max(areas, key=lambda a: a[1])  # the newer page
    if magic == b"CHKD" or (in_use != LOGFILE_NO_CLIENT and not flags & RESTART_VOLUME_IS_CLEAN):
        return _UNCLEAN
    return None


def _restart_area(raw: bytearray | None) -> tuple[bytes, int, int, int] | None:
    """``(magic, current lsn, client in use list, flags)`` of a valid restart page; None otherwise."""
    if raw is None or bytes(raw[:4]) not in (b"RSTR", b"CHKD"):
        return None
    magic, usa_ofs, usa_count, _, system_page, _, area_ofs, _, _ = RESTART_PAGE.unpack_from(raw)
    if system_page != len(raw) or usa_count != len(raw) // FIXUP_STRIDE + 1 or usa_ofs + 2 * usa_count > area_ofs \
            or area_ofs % 8 or area_ofs + RESTART_AREA.size > FIXUP_STRIDE - 2:
        return None
    usn = raw[usa_ofs : usa_ofs + 2]
    for j in range(usa_count - 1):  # the update sequence: a torn page write is no restart page
        end = (j + 1) * FIXUP_STRIDE
        if raw[end - 2 : end] != usn:
            return None
    lsn, _, _, in_use, flags = RESTART_AREA.unpack_from(raw, area_ofs)
    return bytes(magic), lsn, in_use, flags
