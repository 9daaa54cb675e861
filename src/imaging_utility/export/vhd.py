"""VHD writer, dynamic and fixed (VHD specification v1.0; structures in ``c_vhd.py``).

The footer says creator ``"win "`` and carries the exact byte size as ``current_size``, with the CHS
geometry the spec's algorithm gives: Hyper-V, Azure and QEMU then all see the exact size (QEMU rounds
to CHS only for other creators).  The unique id is the export's id (``ExportOptions.disk_id``).

Dynamic: a block (its sector bitmap, all ones, then its data) is appended when the first non-zero byte
of its range arrives; the BAT (0xFFFFFFFF = unallocated) is written page by page as blocks go by.
Zero runs of 64 KiB or more inside a block are holes in the output file.  Fixed: the disk's bytes
(zero runs are holes), then the footer.  ``--azure``: fixed, the size rounded up to a whole MiB (and to
Azure's 20 MiB minimum), at most 32 TiB.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..errors import UsageError
from . import c_vhd as c
from .base import HOLE_GRANULE, ExportOptions, PagedTable, Writer, human
from .feed import Unit
from .sink import Sink


class VhdWriter(Writer):
    granule = HOLE_GRANULE

    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions, *, fixed: bool) -> None:
        super().__init__(source_size, sector_size, opts)
        self.fixed = fixed
        self.name = "vhd-fixed" if fixed else "vhd"
        self.refuse_empty()
        if fixed and opts.block_size is not None:
            raise UsageError("--block-size does not apply to a fixed VHD" + (" (--azure writes one)" if opts.azure
                                                                             else ""))
        self.block_size = opts.block_size or c.DEFAULT_BLOCK_SIZE
        if self.block_size not in c.BLOCK_SIZES:
            raise UsageError(f"VHD block size {human(self.block_size)} is not allowed: use 512 KiB or 2 MiB "
                             "(what Hyper-V creates)")
        if opts.azure:
            self.pad_to(c.AZURE_ALIGN, "Azure needs a whole number of MiB")
            if self.virtual_size < c.AZURE_MIN_SIZE:
                self.virtual_size = c.AZURE_MIN_SIZE
                self.notes.append(f"disk size raised from {source_size} to {c.AZURE_MIN_SIZE} bytes (Azure's "
                                  "minimum upload is 20 MiB); the added bytes read as zeros")
            self.check_limit(c.AZURE_MAX_SIZE, "Azure managed disks hold at most 32 TiB")
        else:
            self.pad_to(c.SECTOR, "VHD sizes are whole 512-byte sectors")
            self.check_limit(c.MAX_SIZE, "use --format vhdx or qcow2" + (" (or --azure, up to 32 TiB)" if fixed
                                                                           else ""))
        self.entries = -(-self.virtual_size // self.block_size)
        self.bat_bytes = -(-self.entries * 4 // c.SECTOR) * c.SECTOR
        self.bitmap = c.bitmap_size(self.block_size)
        self.data_offset = c.BAT_OFFSET + self.bat_bytes
        self.allocated_blocks = 0
        self.timestamp = max(0, int(time.time()) - c.EPOCH_2000) & 0xFFFFFFFF

    def footer(self) -> bytes:
        cyl, heads, spt = c.geometry(self.virtual_size // c.SECTOR)
        buf = bytearray(c.FOOTER_SIZE)
        c.FOOTER.pack_into(
            buf, 0, c.COOKIE, c.FEATURES_RESERVED, c.FORMAT_VERSION,
            c.FIXED_DATA_OFFSET if self.fixed else c.DYNAMIC_HEADER_OFFSET, self.timestamp,
            c.CREATOR_APPLICATION, c.CREATOR_VERSION, c.CREATOR_HOST_OS, self.virtual_size, self.virtual_size,
            cyl, heads, spt, c.DISK_TYPE_FIXED if self.fixed else c.DISK_TYPE_DYNAMIC, 0,
            self.opts.disk_id.bytes, 0,
        )
        buf[c.FOOTER_CHECKSUM_OFFSET : c.FOOTER_CHECKSUM_OFFSET + 4] = c.checksum(buf).to_bytes(4, "big")
        return bytes(buf)

    def dynamic_header(self) -> bytes:
        buf = bytearray(c.DYNAMIC_HEADER_SIZE)
        c.DYNAMIC_HEADER.pack_into(buf, 0, c.DYNAMIC_COOKIE, c.FIXED_DATA_OFFSET, c.BAT_OFFSET, c.HEADER_VERSION,
                                   self.entries, self.block_size, 0)
        off = c.DYNAMIC_HEADER_CHECKSUM_OFFSET
        buf[off : off + 4] = c.checksum(buf).to_bytes(4, "big")
        return bytes(buf)

    def write(self, sink: Sink, units: Iterable[Unit]) -> None:
        if self.fixed:
            for unit in units:
                for start, end in unit.runs:
                    sink.pwrite(unit.view[start : min(end, unit.length)], unit.offset + start)
            sink.pwrite(self.footer(), self.virtual_size)
            sink.truncate(self.virtual_size + c.FOOTER_SIZE)
            self.allocated_blocks = self.entries
            return
        bs = self.block_size
        bat = PagedTable(sink, c.BAT_OFFSET, c.BAT_ENTRY, self.bat_bytes // 4, fill=c.BAT_UNUSED)
        bitmap = b"\xff" * self.bitmap
        end = self.data_offset
        current = -1
        block_data = 0  # file offset of the current block's data
        for unit in units:
            view = unit.view
            for start, stop in unit.runs:
                pos, stop = unit.offset + start, unit.offset + stop
                while pos < stop:
                    b = pos // bs
                    if b != current:
                        current = b
                        bat.set(b, end // c.SECTOR)
                        sink.pwrite(bitmap, end)
                        block_data = end + self.bitmap
                        end = block_data + bs
                        self.allocated_blocks += 1
                    take = min(stop, (b + 1) * bs) - pos
                    sink.pwrite(view[pos - unit.offset : pos - unit.offset + take], block_data + pos - b * bs)
                    pos += take
        bat.finish()
        footer = self.footer()
        sink.pwrite(footer, 0)
        sink.pwrite(self.dynamic_header(), c.DYNAMIC_HEADER_OFFSET)
        sink.pwrite(footer, end)
        sink.truncate(end + c.FOOTER_SIZE)

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "unique_id": str(self.opts.disk_id), "azure": self.opts.azure}
        if not self.fixed:
            out.update(block_size=self.block_size, allocated_blocks=self.allocated_blocks)
        return out
