"""VMDK writer: monolithicSparse and streamOptimized (VMware *Virtual Disk Format 5.0*; ``c_vmdk.py``).

monolithicSparse (QEMU's layout): header, embedded descriptor, redundant GD and all its GTs, GD and all
its GTs, then the non-zero grains appended in guest order.  Each grain table is written (both copies)
once its 32 MiB of guest space is done; tables of empty ranges stay holes, which read as zero
(unallocated).  The GDs are known up front and written last with the header.

streamOptimized (the spec's pure stream, what ovftool writes): header with the GD at the end, the
descriptor, each non-zero grain as a zlib-compressed grain record in LBA order (compressed on the
feed's threads), after the last grain of each grain table a GT marker and the table, then the GD
marker and GD, the footer marker and footer (the header with the GD's real offset), and the
end-of-stream marker.  Written strictly front to back.
"""

from __future__ import annotations

import sys
import threading
import zlib
from array import array
from collections.abc import Iterable
from typing import Any

from ..errors import UsageError
from . import c_vmdk as c
from .base import ExportOptions, Writer, power_of_two_in, round_up
from .feed import Transform, Unit
from .sink import Sink

ZLIB_LEVEL = 1  # see docs/performance.md: level 6 (QEMU's) costs twice the CPU for ~5% smaller files
PROBE = 4096
FLUSH_BYTES = 4 << 20
TOO_BIG = "the VMDK {} would pass 2 TiB (its offsets are 32-bit sector numbers); use --format qcow2 or vhdx"


class VmdkWriter(Writer):
    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions, *, stream: bool) -> None:
        super().__init__(source_size, sector_size, opts)
        self.stream = stream
        self.name = "vmdk-stream" if stream else "vmdk"
        self.refuse_empty()
        self.grain = power_of_two_in(opts.block_size or c.DEFAULT_GRAIN, c.MIN_GRAIN, c.MAX_GRAIN,
                                     "VMDK grain size")
        self.granule = self.grain
        self.pad_to(c.SECTOR, "VMDK sizes are whole 512-byte sectors")
        self.check_limit(c.MAX_CAPACITY - c.SECTOR, "use --format qcow2 or vhdx", "2 TiB less one sector")
        self.grain_sectors = self.grain // c.SECTOR
        self.capacity = self.virtual_size // c.SECTOR
        self.grains = -(-self.capacity // self.grain_sectors)
        self.tables = -(-self.grains // c.GTES_PER_GT)
        self.gd_sectors = -(-self.tables * c.GTE.size // c.SECTOR)
        self.gt_span = c.GTES_PER_GT * self.grain  # guest bytes one grain table maps
        self._local = threading.local()
        self.allocated_grains = 0
        cid = (opts.disk_id.int & 0xFFFFFFFF) or 1
        self.cid = 0x7FFFFFFF if cid in (0xFFFFFFFF, 0xFFFFFFFE) else cid
        if stream:
            self.over_head = c.DESCRIPTOR_OFFSET + c.DESCRIPTOR_SECTORS
        else:
            self.rgd = c.DESCRIPTOR_OFFSET + c.DESCRIPTOR_SECTORS
            self.rgt = self.rgd + self.gd_sectors
            self.gd = self.rgt + self.tables * c.GT_SECTORS
            self.gt = self.gd + self.gd_sectors
            self.over_head = round_up(self.gt + self.tables * c.GT_SECTORS, self.grain_sectors)

    # --- shared pieces ------------------------------------------------------------------------------
    def _header(self, gd_offset: int) -> bytes:
        if self.stream:
            version, flags, rgd, algo = c.STREAM_VERSION, c.STREAM_FLAGS, 0, c.COMPRESS_DEFLATE
        else:
            version, flags, rgd, algo = c.SPARSE_VERSION, c.SPARSE_FLAGS, self.rgd, c.COMPRESS_NONE
        head = c.HEADER.pack(c.MAGIC, version, flags, self.capacity, self.grain_sectors, c.DESCRIPTOR_OFFSET,
                             c.DESCRIPTOR_SECTORS, c.GTES_PER_GT, rgd, gd_offset, self.over_head, 0,
                             c.NEWLINE_CHECK, algo)
        return head.ljust(c.SECTOR, b"\0")

    def _descriptor(self) -> bytes:
        cyl, heads, spt = c.scsi_geometry(self.capacity)
        u = self.opts.disk_id.bytes
        ddb = {
            "virtualHWVersion": "4", "adapterType": "lsilogic", "geometry.cylinders": str(cyl),
            "geometry.heads": str(heads), "geometry.sectors": str(spt),
            "uuid": " ".join(f"{b:02x}" for b in u[:8]) + "-" + " ".join(f"{b:02x}" for b in u[8:]),
            "longContentID": self.opts.disk_id.hex, "toolsVersion": "2147483647",
        }
        name = self.opts.file_name.replace('"', "_")
        return c.descriptor("streamOptimized" if self.stream else "monolithicSparse", self.capacity, name,
                           self.cid, ddb)

    @property
    def transform(self) -> Transform | None:
        return self._compress_unit if self.stream else None

    def _compress_unit(self, unit: Unit) -> None:
        """Grain records (marker + zlib data, padded to a sector) for every non-zero grain of the unit."""
        view, g = unit.view, self.grain
        out: list[bytes] = []
        for start, end in unit.runs:
            for at in range(start, end, g):
                grain = view[at : at + g]
                # Incompressible data (random, already compressed) costs zlib the most for nothing: when a
                # 4 KiB probe does not shrink, the grain goes in stored deflate blocks (a copy and a checksum).
                probe = zlib.compress(grain[:PROBE], ZLIB_LEVEL)
                data = zlib.compress(grain, 0 if len(probe) >= PROBE * 63 // 64 else ZLIB_LEVEL)
                lba = (unit.offset + at) // c.SECTOR
                record = c.GRAIN_MARKER.pack(lba, len(data)) + data
                out.append(record + bytes(-len(record) % c.SECTOR))
        unit.extra = out

    def write(self, sink: Sink, units: Iterable[Unit]) -> None:
        if self.stream:
            self._write_stream(sink, units)
        else:
            self._write_sparse(sink, units)

    # --- monolithicSparse ---------------------------------------------------------------------------
    def _write_sparse(self, sink: Sink, units: Iterable[Unit]) -> None:
        g, gs = self.grain, self.grain_sectors
        table = array("I", bytes(c.GTES_PER_GT * 4))
        current = -1
        end = self.over_head  # next free sector

        def close_table() -> None:
            if current >= 0:
                data = _le(table)
                sink.pwrite(data, (self.gt + current * c.GT_SECTORS) * c.SECTOR)
                sink.pwrite(data, (self.rgt + current * c.GT_SECTORS) * c.SECTOR)
                for i in range(c.GTES_PER_GT):
                    table[i] = 0

        for unit in units:
            view = unit.view
            for start, stop in unit.runs:
                at = start
                while at < stop:
                    grain = (unit.offset + at) // g
                    if grain // c.GTES_PER_GT != current:
                        close_table()
                        current = grain // c.GTES_PER_GT
                    n = min(stop - at, (c.GTES_PER_GT - grain % c.GTES_PER_GT) * g)
                    if end + n // c.SECTOR > c.MAX_FILE_SECTOR:
                        raise UsageError(TOO_BIG.format("file"))
                    sink.pwrite(view[at : at + n], end * c.SECTOR)
                    for k in range(n // g):
                        table[grain % c.GTES_PER_GT + k] = end + k * gs
                    end += n // c.SECTOR
                    self.allocated_grains += n // g
                    at += n
        close_table()
        gd = array("I", [self.gt + i * c.GT_SECTORS for i in range(self.tables)])
        rgd = array("I", [self.rgt + i * c.GT_SECTORS for i in range(self.tables)])
        sink.pwrite(_le(rgd).ljust(self.gd_sectors * c.SECTOR, b"\0"), self.rgd * c.SECTOR)
        sink.pwrite(_le(gd).ljust(self.gd_sectors * c.SECTOR, b"\0"), self.gd * c.SECTOR)
        sink.pwrite(self._descriptor(), c.DESCRIPTOR_OFFSET * c.SECTOR)
        sink.pwrite(self._header(self.gd), 0)
        sink.truncate(max(end, self.over_head) * c.SECTOR)

    # --- streamOptimized ----------------------------------------------------------------------------
    def _write_stream(self, sink: Sink, units: Iterable[Unit]) -> None:
        gd = array("I", bytes(self.tables * 4))
        table = array("I", bytes(c.GTES_PER_GT * 4))
        current = -1
        out = bytearray(self._header(c.GD_AT_END) + self._descriptor())
        base = 0  # file offset of out[0]

        def sector() -> int:
            return (base + len(out)) // c.SECTOR

        def flush(force: bool = False) -> None:
            nonlocal base
            if out and (force or len(out) >= FLUSH_BYTES):
                if (base + len(out)) // c.SECTOR > c.MAX_FILE_SECTOR:
                    raise UsageError(TOO_BIG.format("stream"))
                sink.pwrite(out, base)
                base += len(out)
                out.clear()

        def close_table() -> None:
            if current >= 0:
                out.extend(_marker(c.GT_SECTORS, c.MARKER_GT))
                gd[current] = sector()
                out.extend(_le(table))
                for i in range(c.GTES_PER_GT):
                    table[i] = 0

        for unit in units:
            records = unit.extra if isinstance(unit.extra, list) else []
            i = 0
            for start, stop in unit.runs:
                for at in range(start, stop, self.grain):
                    grain = (unit.offset + at) // self.grain
                    if grain // c.GTES_PER_GT != current:
                        close_table()
                        current = grain // c.GTES_PER_GT
                    table[grain % c.GTES_PER_GT] = sector()
                    out.extend(records[i])
                    i += 1
                    self.allocated_grains += 1
            flush()
        close_table()
        out.extend(_marker(self.gd_sectors, c.MARKER_GD))
        gd_sector = sector()
        out.extend(_le(gd).ljust(self.gd_sectors * c.SECTOR, b"\0"))
        out.extend(_marker(1, c.MARKER_FOOTER))
        out.extend(self._header(gd_sector))
        out.extend(_marker(0, c.MARKER_EOS))
        flush(force=True)
        sink.truncate(base)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subformat": "streamOptimized" if self.stream else "monolithicSparse",
                "grain_size": self.grain, "allocated_grains": self.allocated_grains}


def _le(values: array[int]) -> bytes:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _marker(num_sectors: int, kind: int) -> bytes:
    return c.METADATA_MARKER.pack(num_sectors, 0, kind).ljust(c.SECTOR, b"\0")
