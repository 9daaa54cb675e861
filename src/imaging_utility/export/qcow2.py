"""qcow2 v3 writer (QEMU ``docs/interop/qcow2.txt``; structures in ``c_qcow2.py``), one sequential pass.

After the header cluster and the L1 table, everything is appended: the non-zero guest clusters in guest
order, each L2 table as soon as its range of guest space is done, then the refcount table and blocks.
So the file is written front to back (the header and L1 last, in place).

``--compress``: each non-zero cluster is compressed with zstd on the feed's threads; if it shrinks below a
cluster it is byte-packed after the previous one (incompatible feature bit 3, compression type 1),
otherwise it is stored whole on the next cluster boundary.  Refcounts are 16-bit: 1 for every cluster
without compression; with it, the number of compressed clusters whose sectors touch each host cluster.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections.abc import Iterable
from typing import Any

import zstandard

from ..errors import UsageError
from . import c_qcow2 as c
from .base import ExportOptions, Writer, power_of_two_in
from .feed import Transform, Unit
from .sink import Sink

ZSTD_LEVEL = 3  # QEMU's (ZSTD_compressStream2 with default parameters)
FLUSH_BYTES = 4 << 20


def _be64(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


class Qcow2Writer(Writer):
    name = "qcow2"

    def __init__(self, source_size: int, sector_size: int, opts: ExportOptions) -> None:
        super().__init__(source_size, sector_size, opts)
        self.cluster_size = cs = power_of_two_in(opts.block_size or 1 << c.DEFAULT_CLUSTER_BITS,
                                                 1 << c.MIN_CLUSTER_BITS, 1 << c.MAX_CLUSTER_BITS,
                                                 "qcow2 cluster size")
        self.cluster_bits = cs.bit_length() - 1
        # The spec allows any byte size, but QEMU sees only whole 512-byte sectors of it.
        self.pad_to(c.SECTOR, "QEMU reads qcow2 disks in whole 512-byte sectors")
        self.granule = cs
        self.compress = opts.compress
        self.l2_entries = c.l2_entries(cs)
        self.l1_entries = c.l1_size(self.virtual_size, cs)
        if self.l1_entries * c.ENTRY.size > c.MAX_L1_BYTES:
            limit = c.MAX_L1_BYTES // c.ENTRY.size * self.l2_entries * cs
            self.check_limit(limit, "use a larger --block-size (cluster)")
        self.l1_clusters = -(-self.l1_entries * c.ENTRY.size // cs)
        self._local = threading.local()
        self.data_clusters = 0
        self.compressed_clusters = 0

    # --- compression on the feed's threads ------------------------------------------------------------
    @property
    def transform(self) -> Transform | None:
        return self._compress_unit if self.compress else None

    def _compress_unit(self, unit: Unit) -> None:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        cs, view = self.cluster_size, unit.view
        out: list[bytes | None] = []
        for start, end in unit.runs:
            for at in range(start, end, cs):
                data = cctx.compress(view[at : at + cs])
                out.append(data if len(data) < cs else None)
        unit.extra = out

    # --- layout ---------------------------------------------------------------------------------------
    def write(self, sink: Sink, units: Iterable[Unit]) -> None:
        cs, per_l2 = self.cluster_size, self.l2_entries
        l1 = array("Q", bytes(self.l1_entries * 8))
        l2 = array("Q", bytes(per_l2 * 8))
        l2_index = -1  # the L1 slot whose L2 table is being filled
        refs = array("H") if self.compress else None  # per host cluster, compressed mode only
        pos = (1 + self.l1_clusters) * cs  # the file's end, where the next bytes go
        out = bytearray()  # small appended pieces not yet written; they end at pos

        def count(first: int, last: int) -> None:  # +1 for host clusters first..last (compressed mode)
            assert refs is not None
            if len(refs) <= last:
                refs.frombytes(bytes(2 * (last + 1 - len(refs))))
            for h in range(first, last + 1):
                refs[h] += 1

        def flush() -> None:
            if out:
                sink.pwrite(out, pos - len(out))
                out.clear()

        def append(data: bytes | bytearray | memoryview, own_cluster: bool) -> int:
            """Append ``data`` (on a cluster boundary when ``own_cluster``); its file offset."""
            nonlocal pos
            if own_cluster and pos % cs:
                gap = cs - pos % cs
                out.extend(bytes(gap))
                pos += gap
            at = pos
            if len(data) >= cs:  # whole clusters go straight to the file
                flush()
                sink.pwrite(data, at)
            else:
                out.extend(data)
                if len(out) >= FLUSH_BYTES:
                    pos += len(data)
                    flush()
                    return at
            pos += len(data)
            return at

        def close_l2() -> None:
            if l2_index < 0:
                return
            at = append(_be64(l2), True)
            l1[l2_index] = at | c.OFLAG_COPIED
            if refs is not None:
                count(at // cs, at // cs)
            for i in range(per_l2):
                l2[i] = 0

        for unit in units:
            packed = iter(unit.extra) if isinstance(unit.extra, list) else None
            view = unit.view
            for start, end in unit.runs:
                at = start
                while at < end:
                    guest = (unit.offset + at) // cs
                    if guest // per_l2 != l2_index:
                        close_l2()
                        l2_index = guest // per_l2
                    if packed is None:  # the rest of the run inside this L2 table's range, in one write
                        n = min(end - at, (per_l2 - guest % per_l2) * cs)
                        host = append(view[at : at + n], True)
                        for k in range(n // cs):
                            l2[guest % per_l2 + k] = (host + k * cs) | c.OFLAG_COPIED
                        self.data_clusters += n // cs
                        at += n
                        continue
                    data = next(packed)
                    if data is not None:
                        host = append(data, False)
                        l2[guest % per_l2] = c.compressed_entry(host, len(data), self.cluster_bits)
                        count(host // cs, (host + len(data) - 1) // cs)
                        self.compressed_clusters += 1
                    else:
                        host = append(view[at : at + cs], True)
                        l2[guest % per_l2] = host | c.OFLAG_COPIED
                        count(host // cs, host // cs)
                    self.data_clusters += 1
                    at += cs
        close_l2()
        if pos % cs:
            out.extend(bytes(cs - pos % cs))
            pos += cs - pos % cs
        flush()
        self._write_refcounts(sink, pos // cs, refs)
        sink.pwrite(_be64(l1), cs)
        sink.pwrite(self._header(), 0)

    def _write_refcounts(self, sink: Sink, used: int, refs: array[int] | None) -> None:
        """Refcount table and blocks after the ``used`` clusters; they count themselves."""
        cs = self.cluster_size
        per_block = cs * 8 // (1 << c.REFCOUNT_ORDER)
        blocks, table = 1, 1
        while True:
            total = used + table + blocks
            need_blocks = -(-total // per_block)
            need_table = -(-need_blocks * c.ENTRY.size // cs)
            if (need_blocks, need_table) == (blocks, table):
                break
            blocks, table = need_blocks, need_table
        if table * cs > c.MAX_REFTABLE_BYTES:
            raise UsageError(f"qcow2 refcount table of {table * cs} bytes exceeds QEMU's limit; "
                             "use a larger --block-size (cluster)")
        self.refcount_table_offset = used * cs
        self.refcount_table_clusters = table
        first_block = used + table
        entries = array("Q", [(first_block + i) * cs for i in range(blocks)])
        entries.frombytes(bytes(8 * (table * cs // 8 - blocks)))
        sink.pwrite(_be64(entries), used * cs)
        if refs is None:
            ones = b"\x00\x01" * per_block
        else:
            refs.frombytes(bytes(2 * (total - len(refs))))
            for h in range(used, total):
                refs[h] = 1
            for h in range(1 + self.l1_clusters):  # header and L1 table
                refs[h] = 1
            if sys.byteorder == "little":
                refs.byteswap()
        for i in range(blocks):
            lo, hi = i * per_block, min(total, (i + 1) * per_block)
            page = ones[: 2 * (hi - lo)] if refs is None else refs[lo:hi].tobytes()
            sink.pwrite(page.ljust(cs, b"\0"), (first_block + i) * cs)
        self.file_clusters = total
        sink.truncate(total * cs)

    def _header(self) -> bytes:
        cs = self.cluster_size
        incompat = c.INCOMPAT_COMPRESSION_TYPE if self.compress else 0
        length = c.HEADER_LENGTH_WITH_COMPRESSION if self.compress else c.HEADER_LENGTH
        head = c.HEADER.pack(
            c.MAGIC, c.VERSION, 0, 0, self.cluster_bits, self.virtual_size, 0, self.l1_entries,
            cs if self.l1_entries else 0, self.refcount_table_offset, self.refcount_table_clusters, 0, 0,
            incompat, 0, 0, c.REFCOUNT_ORDER, length,
        )
        if self.compress:
            head += c.COMPRESSION_TYPE.pack(c.COMPRESSION_ZSTD)
        return head + c.HEADER_EXTENSION_END.pack(0, 0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cluster_size": self.cluster_size, "compression": "zstd" if self.compress
                else None, "data_clusters": self.data_clusters, "compressed_clusters": self.compressed_clusters}

