"""VHDX writer, dynamic and fixed ([MS-VHDX] v4.0; layout and structures in ``c_vhdx.py``).

Dynamic: a payload block is allocated (FULLY_PRESENT, at the next free MiB) when the first non-zero
byte of its range arrives; every other block stays NOT_PRESENT.  Zero runs of 64 KiB or more inside an
allocated block are left as holes in the output file, so a used-only source with its data scattered
over large blocks still takes about its used size on the host's disk.  Fixed: every block is present,
contiguous after the BAT; zero data are holes.  The BAT is written page by page as the blocks go by,
sector-bitmap slots (0 = NOT_PRESENT, the only state in a non-differencing file) interleaved after
every ``chunk_ratio`` payload entries.  Headers, region tables and metadata are written last.

Identity: the Page 83 virtual disk id is the export's id (``ExportOptions.disk_id``, derived from the
image's digest), and the File Type Identifier's creator names it with the digest.  A user metadata item
would be the spec's place for more, but dissect.hypervisor 3.x refuses files with unknown items.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..errors import UsageError
from . import c_vhdx as c
from ._crc32c import crc32c
from .base import HOLE_GRANULE, ExportOptions, PagedTable, Writer, power_of_two_in
from .feed import Unit
from .sink import Sink


class VhdxWriter(Writer):
    granule = HOLE_GRANULE

    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions, *, fixed: bool) -> None:
        super().__init__(source_size, sector_size, opts)
        self.fixed = fixed
        self.name = "vhdx-fixed" if fixed else "vhdx"
        self.refuse_empty()
        self.block_size = power_of_two_in(opts.block_size or c.DEFAULT_BLOCK_SIZE, c.MIN_BLOCK_SIZE,
                                          c.MAX_BLOCK_SIZE, "VHDX block size")
        lss = opts.logical_sector or (4096 if sector_size == 4096 else 512)
        if lss not in c.SECTOR_SIZES:
            raise UsageError(f"--logical-sector {lss}: VHDX allows 512 or 4096")
        self.logical_sector = lss
        self.physical_sector = 4096
        self.pad_to(lss, f"a whole number of {lss}-byte logical sectors")
        self.check_limit(c.MAX_VIRTUAL_SIZE, "split the disk or use qcow2")
        self.blocks = -(-self.virtual_size // self.block_size)
        self.ratio = c.chunk_ratio(self.block_size, lss)
        self.bat_entries = c.bat_entries(self.virtual_size, self.block_size, lss)
        self.bat_length = c.bat_region_length(self.bat_entries)
        self.payload_offset = c.BAT_OFFSET + self.bat_length
        self.allocated_blocks = 0
        self.page83 = opts.disk_id

    def _entry(self, file_offset: int) -> int:
        return (file_offset >> c.BAT_OFFSET_SHIFT) << c.BAT_OFFSET_SHIFT | c.PAYLOAD_BLOCK_FULLY_PRESENT

    def write(self, sink: Sink, units: Iterable[Unit]) -> None:
        bs = self.block_size
        bat = PagedTable(sink, c.BAT_OFFSET, c.BAT_ENTRY, self.bat_entries)
        if self.fixed:
            for unit in units:
                for start, end in unit.runs:
                    sink.pwrite(unit.view[start:end], self.payload_offset + unit.offset + start)
            for b in range(self.blocks):
                bat.set(c.bat_index(b, self.ratio), self._entry(self.payload_offset + b * bs))
            self.allocated_blocks = self.blocks
            end = self.payload_offset + self.blocks * bs
        else:
            end = self.payload_offset
            current = -1  # the block allocated last
            block_file = 0  # its offset in the file
            for unit in units:
                view = unit.view
                for start, stop in unit.runs:
                    pos, stop = unit.offset + start, unit.offset + stop
                    while pos < stop:
                        b = pos // bs
                        if b != current:
                            current, block_file = b, end
                            end += bs
                            self.allocated_blocks += 1
                            bat.set(c.bat_index(b, self.ratio), self._entry(block_file))
                        take = min(stop, (b + 1) * bs) - pos
                        sink.pwrite(view[pos - unit.offset : pos - unit.offset + take], block_file + pos - b * bs)
                        pos += take
        bat.finish()
        self._write_metadata(sink)
        self._write_headers(sink)
        sink.truncate(end)

    # --- the fixed structures -------------------------------------------------------------------------
    def creator(self) -> str:
        """The File Type Identifier's informational creator: the tool, the export id and the image digest."""
        text = f"imaging-utility {__version__} id={self.opts.disk_id}"
        digests = self.opts.identity.get("image_digests") or {}
        if digests:
            name = sorted(digests)[0]
            text += f" {name}={digests[name]}"
        return text[: c.CREATOR_CHARS]

    def _write_metadata(self, sink: Sink) -> None:
        flags = c.FP_LEAVE_BLOCK_ALLOCATED if self.fixed else 0
        required_vd = c.MD_IS_VIRTUAL_DISK | c.MD_IS_REQUIRED
        items: list[tuple[uuid.UUID, bytes, int]] = [
            (c.FILE_PARAMETERS_GUID, c.FILE_PARAMETERS.pack(self.block_size, flags), c.MD_IS_REQUIRED),
            (c.VIRTUAL_DISK_SIZE_GUID, c.U64.pack(self.virtual_size), required_vd),
            (c.PAGE83_GUID, self.page83.bytes_le, required_vd),
            (c.LOGICAL_SECTOR_SIZE_GUID, c.U32.pack(self.logical_sector), required_vd),
            (c.PHYSICAL_SECTOR_SIZE_GUID, c.U32.pack(self.physical_sector), required_vd),
        ]
        region = bytearray(c.METADATA_TABLE_SIZE)
        c.METADATA_TABLE_HEADER.pack_into(region, 0, c.METADATA_SIGNATURE, 0, len(items), b"")
        data = bytearray()
        for i, (guid, payload, item_flags) in enumerate(items):
            offset = c.METADATA_TABLE_SIZE + len(data)
            c.METADATA_ENTRY.pack_into(region, c.METADATA_TABLE_HEADER.size + i * c.METADATA_ENTRY.size,
                                       guid.bytes_le, offset, len(payload), item_flags, 0)
            data += payload
            data += bytes(-len(data) % 8)
        sink.pwrite(region + data, c.METADATA_OFFSET)

    def _write_headers(self, sink: Sink) -> None:
        ident = bytearray(c.FILE_ID.size)
        c.FILE_ID.pack_into(ident, 0, c.FILE_SIGNATURE, self.creator().encode("utf-16-le"))
        sink.pwrite(ident, 0)
        file_write, data_write = uuid.uuid4(), uuid.uuid4()
        for seq, offset in enumerate(c.HEADER_OFFSETS, start=1):
            header = bytearray(c.HEADER_SIZE)
            c.HEADER.pack_into(header, 0, c.HEADER_SIGNATURE, 0, seq, file_write.bytes_le, data_write.bytes_le,
                               bytes(16), c.LOG_VERSION, c.HEADER_VERSION, c.LOG_LENGTH, c.LOG_OFFSET)
            c.U32.pack_into(header, c.HEADER_CHECKSUM_OFFSET, crc32c(header))
            sink.pwrite(header, offset)
        table = bytearray(c.REGION_TABLE_SIZE)
        c.REGION_TABLE_HEADER.pack_into(table, 0, c.REGION_SIGNATURE, 0, 2, 0)
        for i, (guid, offset, length) in enumerate(((c.BAT_GUID, c.BAT_OFFSET, self.bat_length),
                                                    (c.METADATA_GUID, c.METADATA_OFFSET, c.METADATA_LENGTH))):
            c.REGION_ENTRY.pack_into(table, c.REGION_TABLE_HEADER.size + i * c.REGION_ENTRY.size,
                                     guid.bytes_le, offset, length, c.REGION_REQUIRED)
        c.U32.pack_into(table, c.REGION_TABLE_CHECKSUM_OFFSET, crc32c(table))
        for offset in c.REGION_TABLE_OFFSETS:
            sink.pwrite(table, offset)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "block_size": self.block_size, "logical_sector_size": self.logical_sector,
                "physical_sector_size": self.physical_sector, "allocated_blocks": self.allocated_blocks,
                "page83_id": str(self.page83), "creator": self.creator()}
