"""Who the source is: the identity stored in the image header and checked on ``--resume``.

Everything comes from the kernel and udev's files, no external tools:

* sysfs ``/sys/dev/block/MAJ:MIN`` (name, partition number and start, parent
  disk), ``.../device/{vendor,model,serial,wwid}`` of the whole disk, and a loop
  device's ``loop/backing_file``;
* udev's database ``/run/udev/data/bMAJ:MIN`` (``E:ID_SERIAL=`` …) when udev runs;
* ``/dev/disk/by-{id,path,uuid,partuuid}`` symlinks that resolve to the device;
* the partition table of a whole disk, read from the device itself: the MBR
  disk signature (offset 0x1B8) or the GPT header's disk GUID (LBA 1, offset 56).

The dict is JSON-able; keys that do not apply are ``None``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import stat
import struct
import sys
import uuid

from .. import __version__
from ..errors import SourceIOError
from .source import FileSource

SYS_DEV_BLOCK = "/sys/dev/block"
UDEV_DATA = "/run/udev/data"
DEV_DISK = "/dev/disk"
STABLE_NAME_DIRS = ("by-id", "by-path", "by-uuid", "by-partuuid")
#: udev properties copied into the identity (when udev has a database entry for the device).
UDEV_KEYS = (
    "ID_BUS", "ID_VENDOR", "ID_MODEL", "ID_REVISION", "ID_SERIAL", "ID_SERIAL_SHORT", "ID_WWN",
    "ID_WWN_WITH_EXTENSION", "ID_PATH", "ID_PART_TABLE_TYPE", "ID_PART_TABLE_UUID",
    "ID_PART_ENTRY_UUID", "ID_PART_ENTRY_NUMBER", "ID_FS_TYPE", "ID_FS_UUID",
)

KIND_BLOCK = "block-device"
KIND_FILE = "file"

# MBR (classic generic MBR layout): disk signature u32le at 0x1B8, boot signature 0x55AA at 0x1FE.
MBR_DISK_SIGNATURE = struct.Struct("<I")
MBR_DISK_SIGNATURE_OFFSET = 0x1B8
MBR_BOOT_SIGNATURE_OFFSET = 0x1FE
MBR_BOOT_SIGNATURE = b"\x55\xaa"
# GPT header (UEFI 2.x §5.3.2) at LBA 1: signature "EFI PART" at 0, DiskGUID (mixed-endian) at 56.
GPT_SIGNATURE = b"EFI PART"
GPT_DISK_GUID_OFFSET = 56


def _utc_iso(ns: int) -> str:
    """ISO 8601 UTC with 'Z', microseconds truncated (no float rounding)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=rest // 1000)
    return stamp.isoformat().replace("+00:00", "Z")


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def udev_properties(major: int, minor: int) -> dict[str, str]:
    """The ``E:`` properties in udev's database entry for block device ``major:minor``."""
    props: dict[str, str] = {}
    text = _read_text(os.path.join(UDEV_DATA, f"b{major}:{minor}"))
    for line in (text or "").splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            props[key] = value
    return props


def stable_names(rdev: int) -> list[str]:
    """Every ``/dev/disk/by-{id,path,uuid,partuuid}/*`` symlink that resolves to device ``rdev``."""
    names: list[str] = []
    for sub in STABLE_NAME_DIRS:
        folder = os.path.join(DEV_DISK, sub)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            link = os.path.join(folder, entry)
            try:
                st = os.stat(link)
            except OSError:
                continue  # dangling link
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                names.append(link)
    return names


def partition_table(source: FileSource) -> dict[str, str] | None:
    """``{"type": "gpt"|"dos", "id": ...}`` of a disk, or ``None`` when it has no table.

    The id is spelled as ``blkid``/``lsblk`` spell PTUUID: the GPT disk GUID in
    lower case, or the MBR disk signature as eight lower-case hex digits.
    """
    sectors = [source.sector_size] + [s for s in (512, 4096) if s != source.sector_size]
    for ss in sectors:  # a disk imaged from a 4Kn drive keeps its GPT at byte 4096
        if source.size < 2 * ss:
            continue
        header = _read(source, ss, 92)
        if header[:8] == GPT_SIGNATURE:
            guid = uuid.UUID(bytes_le=header[GPT_DISK_GUID_OFFSET : GPT_DISK_GUID_OFFSET + 16])
            return {"type": "gpt", "id": str(guid)}
    if source.size < 512:
        return None
    mbr = _read(source, 0, 512)
    if mbr[MBR_BOOT_SIGNATURE_OFFSET:] != MBR_BOOT_SIGNATURE:
        return None
    (signature,) = MBR_DISK_SIGNATURE.unpack_from(mbr, MBR_DISK_SIGNATURE_OFFSET)
    return {"type": "dos", "id": f"{signature:08x}"}


def _read(source: FileSource, offset: int, length: int) -> bytes:
    # Whole sectors through an aligned buffer, so this also works on an O_DIRECT source.
    ss = max(source.sector_size, 512)
    start = offset - offset % ss
    span = -(-(offset + length - start) // ss) * ss
    buf = source.alloc_buffer(span)  # not closed explicitly: a traceback may still hold a view of it
    source.readinto_at(start, memoryview(buf)[:span])
    return bytes(buf[offset - start : offset - start + length])


def _common() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "tool_version": __version__,
        "command_line": list(sys.argv),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def source_identity(path: str, source: FileSource) -> dict[str, object]:
    """The JSON-able identity of ``source`` (opened from ``path``) for the image header."""
    if not source.is_block_device:
        st = os.stat(path)
        return {
            "kind": KIND_FILE,
            "path": os.path.abspath(path),
            "size": source.size,
            "mtime": _utc_iso(st.st_mtime_ns),
            "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino,
            "device_number": st.st_dev,
            **_common(),
        }
    return {**_block_identity(path, source), **_common()}


def _block_identity(path: str, source: FileSource) -> dict[str, object]:
    rdev = os.stat(path).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    sysdir = os.path.realpath(os.path.join(SYS_DEV_BLOCK, f"{major}:{minor}"))
    name = os.path.basename(sysdir)
    part_no = _read_int(os.path.join(sysdir, "partition"))
    whole_dir = os.path.dirname(sysdir) if part_no is not None else sysdir
    parent = os.path.basename(whole_dir) if part_no is not None else None
    start = _read_int(os.path.join(sysdir, "start"))  # in 512-byte units whatever the sector size
    udev = udev_properties(major, minor)
    names = stable_names(rdev)
    hw = os.path.join(whole_dir, "device")
    # sysfs first: it is there in any rescue system, udev may not be, and the two spell
    # some values differently; a resume then compares like with like.
    serial = (
        _read_text(os.path.join(hw, "serial"))  # NVMe, MMC, virtio
        or _vpd_serial(os.path.join(hw, "vpd_pg80"))  # SCSI, SATA behind libata, USB bridges
        or udev.get("ID_SERIAL_SHORT")
        or udev.get("ID_SERIAL")
    )
    wwn = (
        _read_text(os.path.join(hw, "wwid"))
        or _read_text(os.path.join(whole_dir, "wwid"))
        or udev.get("ID_WWN_WITH_EXTENSION")
        or udev.get("ID_WWN")
        or _wwn_from_names(names if part_no is None else stable_names(_devno(whole_dir)))
    )
    table = None
    if part_no is None:
        try:
            table = partition_table(source)
        except SourceIOError:
            table = None  # an unreadable first sector must not stop a rescue run
    return {
        "kind": KIND_BLOCK,
        "path": os.path.abspath(path),
        "device": os.path.realpath(path),
        "name": name,
        "major": major,
        "minor": minor,
        "stable_names": names,
        "wwn": wwn,
        "vendor": _read_text(os.path.join(hw, "vendor")) or udev.get("ID_VENDOR"),
        "model": _read_text(os.path.join(hw, "model")) or udev.get("ID_MODEL"),
        "serial": serial,
        "size": source.size,
        "logical_sector_size": source.sector_size,
        "physical_sector_size": source.physical_sector_size,
        "whole_disk": part_no is None,
        "parent": parent,
        "partition_number": part_no,
        "partition_start": _times(start, 512),
        "partition_table": table,
        "backing_file": _read_text(os.path.join(whole_dir, "loop", "backing_file")),
        "udev": {k: udev[k] for k in UDEV_KEYS if k in udev},
    }


def _vpd_serial(path: str) -> str | None:
    """The product serial number in a SCSI Unit Serial Number VPD page (SPC-4 §7.8.16)."""
    try:
        with open(path, "rb") as f:
            page = f.read(260)
    except OSError:
        return None
    if len(page) < 4 or page[1] != 0x80:
        return None
    length = int.from_bytes(page[2:4], "big")
    return page[4 : 4 + length].decode("ascii", "replace").strip(" \0") or None


def _devno(sysdir: str) -> int:
    """The device number in ``sysdir/dev`` (``MAJ:MIN``), or -1."""
    major, _, minor = (_read_text(os.path.join(sysdir, "dev")) or "").partition(":")
    try:
        return os.makedev(int(major), int(minor))
    except ValueError:
        return -1


def _times(value: int | None, factor: int) -> int | None:
    return None if value is None else value * factor


def _wwn_from_names(names: list[str]) -> str | None:
    for link in names:
        base = os.path.basename(link)
        if base.startswith("wwn-") and "-part" not in base:
            return base[4:]
    return None


# Keys compared on resume for a block device, in order; compared only when both sides know them,
# because a rescue system without udev knows less than the system that started the image.
_DEVICE_KEYS = ("logical_sector_size", "serial", "wwn", "model", "vendor", "partition_start",
                "backing_file")


def identity_mismatch(stored: dict[str, object], current: dict[str, object]) -> str | None:
    """One line naming the first stable difference that makes ``current`` a different source
    than the one ``stored`` describes, or ``None`` when a resume may go ahead.

    Device names (``/dev/sdb``), host, time and command line are not compared: they change
    across reboots without the data changing.
    """
    kind_a, kind_b = stored.get("kind"), current.get("kind")
    if kind_a != kind_b:
        return f"source kind changed: the image was of a {kind_a}, this is a {kind_b}"
    if stored.get("size") != current.get("size"):
        return f"source size changed: was {stored.get('size')} bytes, now {current.get('size')} bytes"
    if kind_a == KIND_FILE:
        if stored.get("path") != current.get("path"):
            return f"source file changed: the image was of {stored.get('path')}, not {current.get('path')}"
        key = "mtime_ns" if "mtime_ns" in stored and "mtime_ns" in current else "mtime"
        if stored.get(key) != current.get(key):
            return (
                f"source file {current.get('path')} was modified since imaging started "
                f"(mtime was {stored.get('mtime')}, now {current.get('mtime')})"
            )
        return None
    for key in _DEVICE_KEYS:
        a, b = stored.get(key), current.get(key)
        if a is not None and b is not None and a != b:
            return f"source device {key.replace('_', ' ')} changed: was {a!r}, now {b!r}"
    ta, tb = stored.get("partition_table"), current.get("partition_table")
    if isinstance(ta, dict) and isinstance(tb, dict) and ta != tb:
        return (
            f"source disk was repartitioned: partition table was {ta.get('type')} {ta.get('id')}, "
            f"now {tb.get('type')} {tb.get('id')}"
        )
    return None
