"""Partition tables as text: ``info`` and ``restore`` show them the same way.

Columns: number (what ``--partition N`` takes), start, size, type, filesystem, label, used bytes.  Names
and labels come from the disk and are shown escaped.
"""

from __future__ import annotations

from typing import Any

from ..blocks import BlockSource, WindowSource
from ..errors import Error, NotFoundError
from ..filesystems import FilesystemInfo, allocation_map, detect
from ..ops.diskmap import type_name
from ..partitions import PartitionTable
from .output import human_bytes, shown

Row = dict[str, Any]


def rows_from_meta(disk: dict[str, Any]) -> list[Row]:
    """Rows from an image header's (or manifest's) ``disk`` section."""
    rows = []
    for p in disk.get("partitions") or []:
        fs = p.get("filesystem") or {}
        rows.append({"number": p.get("number"), "start": p.get("start"), "size": p.get("length"),
                     "type": p.get("type"), "name": p.get("name"), "filesystem": fs.get("type"),
                     "label": fs.get("label"), "used": p.get("used_bytes"), "kept": p.get("kept")})
    return rows


def rows_from_table(source: BlockSource, table: PartitionTable, *, used: bool = True) -> list[Row]:
    """Rows read from the disk itself: each partition's filesystem detected (and its used bytes mapped)."""
    rows = []
    for p in table.partitions:
        window = WindowSource(source, p.offset, p.length)
        fs: FilesystemInfo | None = None
        used_bytes: int | None = None
        try:
            fs = detect(window)
            if fs is not None and used:
                used_bytes = allocation_map(window)[1].used_bytes
        except (Error, ValueError):
            pass  # shown without a filesystem or without used bytes
        rows.append({"number": p.number, "start": p.offset, "size": p.length, "type": type_name(p),
                     "name": p.name, "filesystem": fs.type if fs else None, "label": fs.label if fs else None,
                     "used": used_bytes, "cut": p.declared_length is not None})
    return rows


def table_summary(table: dict[str, Any] | None, count: int, sector_size: int) -> str:
    if not table or not table.get("type"):
        return "no partition table"
    ss = table.get("sector_size") or sector_size  # a table read from a file may count 4096-byte sectors
    text = f"{table['type']} {table.get('disk_id')}, {count} partition{'s' * (count != 1)}, sector {ss}"
    if table.get("first_usable_lba") is not None and table["type"] == "gpt":
        text += f", usable LBA {table['first_usable_lba']}..{table['last_usable_lba']}"
    return text


def table_info(table: PartitionTable, size: int) -> dict[str, Any]:
    """The ``table`` part of a disk section, from a parsed table (an image without a ``disk`` section)."""
    out: dict[str, Any] = {"type": table.scheme, "disk_id": table.disk_id, "sector_size": table.sector_size}
    if table.gpt is not None:
        out.update(first_usable_lba=table.gpt.first_usable_lba, last_usable_lba=table.gpt.last_usable_lba)
    elif table.scheme:
        out.update(first_usable_lba=1, last_usable_lba=size // table.sector_size - 1)
    return out


def render_rows(rows: list[Row], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    cells = [["#", "start", "size", "type", "filesystem", "label", "used"]]
    for r in rows:
        used = "-" if r.get("used") is None else human_bytes(r["used"])
        if r.get("kept") == "signature page":
            used += " (signature page)"
        cells.append([str(r["number"]), human_bytes(r["start"]), human_bytes(r["size"]) + (" (cut)" if r.get("cut")
                      else ""), shown(str(r.get("type") or "")), r.get("filesystem") or "-",
                      shown(r["label"]) if r.get("label") else "-", used])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def select_rows(rows: list[Row], partition: int | None, whose: str) -> list[Row]:
    """The row of ``--partition N`` (all rows without it); ``NotFoundError`` naming ``whose`` partitions."""
    if partition is None:
        return rows
    picked = [r for r in rows if r["number"] == partition]
    if not picked:
        numbers = ", ".join(str(r["number"]) for r in rows) or "none"
        raise NotFoundError(f"partition {partition} not found; {whose} partitions: {numbers}")
    return picked


def volume_lines(volumes: list[dict[str, Any]]) -> list[str]:
    """An LVM2 physical volume's logical volumes: filesystem, size and the bytes kept for each."""
    lines = []
    for vol in volumes:
        note = f"; {vol['note']}" if vol.get("note") else ""
        lines.append(f"  volume     {vol['name']}: {vol.get('filesystem') or 'no known filesystem'}, "
                     f"{human_bytes(vol['size'])}, {human_bytes(vol['used_bytes'])} kept{note}")
    return lines


def disk_lines(disk: dict[str, Any], rows: list[Row], sector_size: int) -> list[str]:
    """A disk section as ``info`` shows it: the table and its ``rows``, or the one volume; nothing when
    there is neither."""
    if disk["table"] and disk["table"].get("type"):
        return [f"partitions   {table_summary(disk['table'], len(disk['partitions']), sector_size)}",
                *render_rows(rows)]
    v = disk["volume"]
    if not v:
        return []
    used = f", used {human_bytes(v['used'])}" if v.get("used") is not None else ""
    label = f" '{shown(v['label'])}'" if v.get("label") else ""
    return [f"filesystem   {v['type']}{label}, {human_bytes(v['size'])}{used}"]
