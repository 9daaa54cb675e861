"""NTFS adapter of ``tree.FileTree`` over dissect.ntfs.

Names come from the directory index ($I30) entries' $FILE_NAME keys (DOS 8.3 aliases left out), so
a hard link is listed once per name and a damaged MFT record still shows its name.  The NTFS
metafiles ($MFT, $Bitmap, … $Extend) are hidden from the root listing, as Windows hides them.
Data runs come from the $DATA attribute's mapping pairs (``MftRecord.dataruns``); resident and
compressed data is read through dissect's streams instead.

Records are loaded by our own parser (``ntfs_record.py``, ten times faster) whenever it can take them
whole; records with an attribute list, a reparse point, compressed or encrypted data, or anything that
fails its checks go through dissect.  Directories list through the $I30 index, read with dissect's
structures but walked here (``i30_entries``): only the index buffers its bitmap marks in use.
"""

from __future__ import annotations

import io
import itertools
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

from dissect.ntfs.c_ntfs import (
    ATTRIBUTE_FLAG_COMPRESSION_MASK,
    ATTRIBUTE_FLAG_ENCRYPTED,
    ATTRIBUTE_TYPE_CODE,
    FILE_NAME_DOS,
)
from dissect.ntfs.exceptions import Error as DissectError
from dissect.ntfs.index import IndexBuffer
from dissect.ntfs.mft import MftRecord
from dissect.ntfs.util import segment_reference

from ..errors import CorruptImageError
from . import ntfs_links, wof
from .dissect_ntfs import NTFS
from .ntfs import probe
from .ntfs_record import MftRecords, Record
from .ntfs_state import volume_state
from .tree import BlockFile, Entry, Layout, runs_from_clusters
from .tree_stream import check_runs, read_runs

FIRST_USER_RECORD = 24  # records 0-23 are reserved for metafiles
FILE_NAME_NAME = 0x42  # offset of the name in a $FILE_NAME value (length and namespace bytes just before)
RECORD_IN_USE = 0x0001


def i30_entries(node: MftRecord, volume_size: int) -> Iterator[Any]:
    """The entries of a directory's $I30 index: those of $INDEX_ROOT, then those of each index buffer of
    $INDEX_ALLOCATION that the index's $BITMAP marks in use, each up to its end entry.

    dissect's own walk reads every buffer of the allocation and skips the ones that fail their checks:
    a buffer freed when the directory shrank still holds its old entries, so deleted names came back
    (some pointing to records since reused for other files), and a damaged buffer in use was skipped
    without a word.  Here a buffer in use that fails its checks is an error.  The sizes the index claims
    are capped by the volume's: no more buffers than ``volume_size`` can hold."""
    index = node.index("$I30")
    for entry in index.root.entries():
        if entry.is_end:
            break
        yield entry
    stream = index._index_stream
    if not stream:
        return
    size = int(index.root.bytes_per_index_buffer)
    if size < 512 or size & (size - 1):
        raise CorruptImageError(f"ntfs: the $I30 index root of MFT record {node.segment} claims index buffers "
                                f"of {size} bytes")
    count = min(stream.size, volume_size) // size
    try:
        bitmap = node.open("$I30", ATTRIBUTE_TYPE_CODE.BITMAP).read((count + 7) // 8)
    except FileNotFoundError:
        raise CorruptImageError(f"ntfs: directory MFT record {node.segment} has an $INDEX_ALLOCATION but no "
                                "$BITMAP") from None
    used = (i for byte, bits in enumerate(bitmap) if bits for i in range(byte * 8, byte * 8 + 8)
            if bits >> (i & 7) & 1)
    for i in itertools.takewhile(lambda i: i < count, used):
        try:
            buffer = IndexBuffer(index, stream, i * size, size)
            entries = list(itertools.takewhile(lambda e: not e.is_end, buffer.entries()))
        except (DissectError, EOFError) as e:
            raise CorruptImageError(f"ntfs: index buffer {i} of directory MFT record {node.segment} is "
                                    f"damaged: {e or type(e).__name__}") from None
        yield from entries


class NtfsBackend:
    fs_type = "ntfs"
    dot_entries = False
    case_insensitive = True

    def __init__(self, fh: BlockFile) -> None:
        self.fs = NTFS(fh)
        if self.fs.mft is None:
            raise CorruptImageError("ntfs: the $MFT could not be opened")
        self.source = fh.source
        boot = probe(fh.source)
        self.records = MftRecords(fh.source, boot) if boot is not None else None
        unclean = volume_state(fh.source, boot) if boot is not None else None
        self.warnings = [] if unclean is None else [
            f"ntfs: {unclean}: files are shown as last written in place, without the log's changes (a file "
            "changed, created or deleted since may be missing, out of date or show other data)"]

    def root(self) -> MftRecord:
        return self.fs.mft.get(5)

    def label(self, node: MftRecord | Record) -> str:
        return f"MFT record {self.key(node)}"

    def children(self, node: MftRecord | Record) -> list[tuple[str, Any]]:
        """(name, MFT record number) of each $I30 entry; the key is a $FILE_NAME value, parsed here."""
        if isinstance(node, Record):
            node = self.fs.mft.get(node.number)
        out: list[tuple[str, Any]] = []
        is_root = node.segment == 5
        for ie in i30_entries(node, self.source.size):
            key = ie.key
            if len(key) < FILE_NAME_NAME:
                continue
            number = segment_reference(ie.header.FileReference)
            length, namespace = key[FILE_NAME_NAME - 2], key[FILE_NAME_NAME - 1]
            if namespace == FILE_NAME_DOS:
                continue
            raw = key[FILE_NAME_NAME : FILE_NAME_NAME + 2 * length]
            if len(raw) != 2 * length:
                raise CorruptImageError(f"ntfs: the $I30 entry for MFT record {number} has a truncated name")
            name = raw.decode("utf-16-le", "replace")  # unpaired surrogates (legal on NTFS) become U+FFFD
            if is_root and (name == "." or name.startswith("$")) and number < FIRST_USER_RECORD:
                continue  # metafiles, and the root's entry for itself
            out.append((name, number))
        return out

    def load(self, number: int) -> MftRecord | Record:
        fast = self.records.get(number) if self.records is not None else None
        if fast is not None:
            return fast
        try:
            record = self.fs.mft.get(number)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorruptImageError(f"ntfs: MFT record {number} is unreadable: {msg}") from None
        if not record.header.Flags & RECORD_IN_USE:
            raise CorruptImageError(f"ntfs: MFT record {number} is not in use (deleted or damaged)")
        return record

    def key(self, node: MftRecord | Record) -> int | None:
        if isinstance(node, Record):
            return node.number
        return int(node.segment) if node.segment is not None else None

    def describe(self, node: MftRecord | Record, name: str, path: str) -> Entry:
        if isinstance(node, Record):
            kind = "dir" if node.is_dir else "file"
            main = node.streams.get("")
            size = main.size if main and kind == "file" else 0
            target: str | None = None
            rdev: int | None = None
            if kind == "file":
                kind, target, rdev = self._interix(node, node.attributes, size)
            lx = ntfs_links.lx_fields(node.ea) if node.ea else {}
            return Entry(name=name, path=path, type=kind, size=size, mtime_ns=node.mtime_ns, inode=node.number,
                         nlink=node.link_count, streams=tuple(sorted(n for n in node.streams if n)), target=target,
                         atime_ns=node.atime_ns, rdev=rdev, mode=_perm(lx), uid=lx.get("uid"),
                         gid=lx.get("gid"))
        attrs = node.attributes
        mtime: int | None = None
        atime: int | None = None
        attributes = 0
        std = attrs[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        if std:
            mtime = int(std[0].attribute.last_modification_time_ns)
            atime = int(std[0].attribute.last_access_time_ns)
            attributes = int(std[0].attribute.file_attributes)
        streams = tuple(sorted({a.name for a in attrs[ATTRIBUTE_TYPE_CODE.DATA] if a.name}))
        rdev = None
        size = int(node.size()) if not node.is_dir() and node.has_stream("") else 0
        lx = self._lx(node)
        if node.is_reparse_point():
            # (a WOF file keeps its WofCompressedData stream listed, so that `ls --damaged` and `extract
            # --streams` see where its data is stored)
            kind, target = self._reparse(node, size)
            rdev = lx.get("rdev") if kind in ("char", "block") else None
        elif node.is_dir():
            kind, target = "dir", None
        else:
            kind, target, rdev = self._interix(node, attributes, size)
        return Entry(name=name, path=path, type=kind, size=size if kind in ("file", "reparse") else 0,
                     mtime_ns=mtime, inode=int(node.segment), nlink=int(node.header.ReferenceCount),
                     streams=streams, target=target, atime_ns=atime, rdev=rdev, mode=_perm(lx), uid=lx.get("uid"),
                     gid=lx.get("gid"))

    def _lx(self, node: MftRecord) -> dict[str, int]:
        """WSL's POSIX fields from the record's extended attributes (none: ``{}``)."""
        out: dict[str, int] = {}
        for attr in node.attributes[ATTRIBUTE_TYPE_CODE.EA]:
            if 0 < attr.header.size <= ntfs_links.EA_MAX:  # more is no valid EA set: ignored
                out.update(ntfs_links.lx_fields(bytes(attr.data())))
        return out

    def _interix(self, node: MftRecord | Record, attributes: int, size: int) -> tuple[str, str | None, int | None]:
        """(type, target, rdev) of a plain file: ``file`` unless it is one of ntfs-3g's Interix files."""
        what = ntfs_links.interix_kind(attributes, size)
        if what is None:
            return "file", None, None
        if what != "read":
            return what, None, None
        found = ntfs_links.interix(self._small_data(node, size))
        return found if found is not None else ("file", None, None)

    def _small_data(self, node: MftRecord | Record, size: int) -> bytes:
        """The first ``size`` bytes (a few KiB at most) of the unnamed stream."""
        layout = self.layout(node, None)
        if layout.runs is None:
            assert layout.opener is not None
            return bytes(layout.opener().read(size))
        buf = bytearray(size)
        view = memoryview(buf)
        for foff, disk, n in layout.runs:
            n = min(n, size - foff)
            if n > 0 and disk is not None:
                self.source.readinto_at(disk, view[foff : foff + n])
        return bytes(buf)

    def link_target(self, entry: Entry, find: Callable[[list[str]], str | None]) -> str:
        return ntfs_links.link_target(entry.path, entry.target or "", find)

    def _reparse(self, node: MftRecord, size: int) -> tuple[str, str | None]:
        """(type, target) of a reparse point: a link; a file whose data is here (compressed by WOF, or a cloud
        file wholly on this volume); else ``reparse``, the target saying what it is."""
        compressed = self._wof(node)
        if isinstance(compressed, wof.Wof):
            return "file", None
        if compressed is not None:  # a WOF file that is not read here, and why
            return "reparse", f"reparse tag {wof.TAG_WOF:#010x}: {compressed}"
        rp = node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0].attribute
        tag = int(rp.tag)
        if tag in ntfs_links.LX_SPECIAL:  # a WSL FIFO, socket or device
            return ntfs_links.LX_SPECIAL[tag], None
        target = ntfs_links.reparse_target(tag, rp.substitute_name, bool(rp.relative), rp.buffer)
        if target is not None:
            return "symlink", target
        if ntfs_links.data_in_place(tag):
            here = self._bytes_here(node)
            if here == size:
                return "file", None
            cloud = f"reparse tag {tag:#010x}: a cloud file (OneDrive or another sync client)"
            if here is None:
                return "reparse", f"{cloud} stored compressed: whether all its data is on this volume is not known"
            return "reparse", f"{cloud}: {here} of its {size} bytes are on this volume, the rest only in the cloud"
        try:
            target = rp.print_name or rp.substitute_name
        except Exception:
            target = None
        return "reparse", target or f"reparse tag {tag:#010x}"

    def _bytes_here(self, node: MftRecord) -> int | None:
        """Bytes of the unnamed stream stored on the volume (resident, or in clusters below its valid data
        length); ``None`` when it is compressed (its holes are not the file's own)."""
        attrs = node.attributes.find("", ATTRIBUTE_TYPE_CODE.DATA)
        if not attrs:
            return 0
        layout = self.layout(node, None)
        if layout.runs is None:
            return layout.size if attrs[0].header.resident else None
        return sum(n for _f, disk, n in layout.runs if disk is not None)

    def _wof(self, node: MftRecord) -> wof.Wof | str | None:
        """A WOF file's compression, or why it cannot be read; ``None`` for other reparse points."""
        rp = node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0].attribute
        return wof.parse(rp.buffer) if int(rp.tag) == wof.TAG_WOF else None

    def _wof_layout(self, node: MftRecord, compressed: wof.Wof) -> Layout:
        """The decoded data of a WOF file, read chunk by chunk from its WofCompressedData stream."""
        label = f"ntfs MFT record {node.segment}"
        size = int(node.size()) if node.has_stream("") else 0
        inner = self.layout(node, wof.STREAM)
        if inner.runs is not None:
            check_runs(inner.runs, self.source.size, f"{label} stream {wof.STREAM!r}")

        def opener() -> IO[bytes]:
            return cast(IO[bytes], wof.WofFile(compressed, size, inner.size, self._reader(inner, label), label))

        return Layout(size, None, opener)

    def _reader(self, inner: Layout, label: str) -> wof.ReadAt:
        """``read_at(offset, n)`` of a stream: from its runs, or (resident) through its own stream."""
        what = f"{label} stream {wof.STREAM!r}"
        if inner.runs is None:
            assert inner.opener is not None
            stream = inner.opener()

            def read_stream(offset: int, n: int) -> bytes:
                stream.seek(offset)
                data = stream.read(n)
                if len(data) != n:
                    raise CorruptImageError(f"{what} ends at byte {offset + len(data)}")
                return bytes(data)

            return read_stream
        runs = inner.runs
        starts = [r[0] for r in runs]

        def read_runs_at(offset: int, n: int) -> bytes:
            buf = bytearray(n)
            read_runs(self.source, runs, starts, offset, memoryview(buf), what)
            return bytes(buf)

        return read_runs_at

    def layout(self, node: MftRecord | Record, stream: str | None) -> Layout:
        if isinstance(node, Record):
            return self._fast_layout(node, stream)
        if not stream and node.is_reparse_point():
            compressed = self._wof(node)
            if isinstance(compressed, wof.Wof):
                return self._wof_layout(node, compressed)
        attrs = node.attributes.find(stream or "", ATTRIBUTE_TYPE_CODE.DATA)
        label = f"ntfs MFT record {node.segment}" + (f" stream {stream!r}" if stream else "")
        if not attrs:
            return Layout(0, [])
        size = int(attrs.size())
        first = attrs[0].header
        if first.flags & ATTRIBUTE_FLAG_ENCRYPTED:
            raise CorruptImageError(f"{label} is encrypted (EFS): its data cannot be read without its owner's "
                                    "private key, which no image holds")
        if first.resident:
            return Layout(size, None, attrs.open)
        if first.flags & ATTRIBUTE_FLAG_COMPRESSION_MASK:  # LZNT1, decoded by dissect
            return Layout(size, None, attrs.open, stored=self._units(attrs.dataruns(), first.compression_unit, size))
        valid = max(0, min(int(first.header.Form.Nonresident.ValidDataLength), size))
        runs = runs_from_clusters(attrs.dataruns(), self.fs.cluster_size, 0, valid, label)
        if valid < size:  # past the valid data length the stream reads as zeros
            runs.append((valid, None, size - valid))
        return Layout(size, runs)

    def _units(self, runs: list[tuple[int | None, int]], unit_log: int | None,
               size: int) -> list[tuple[int, int, int, int]]:
        """An LZNT1 stream's clusters, each with the compression unit(s) of the file it holds: a unit
        (16 clusters) is decoded whole, so one lost byte of it loses the unit."""
        cs = self.fs.cluster_size
        unit = cs << min(unit_log or 0, 16)
        out, vcn = [], 0
        for lcn, count in runs:
            if lcn is not None and count > 0:
                first, last = vcn * cs // unit * unit, min(-(-(vcn + count) * cs // unit) * unit, size)
                if first < last:
                    out.append((lcn * cs, count * cs, first, last - first))
            vcn += count
        return out

    def _fast_layout(self, node: Record, stream: str | None) -> Layout:
        data = node.streams.get(stream or "")
        if data is None:
            return Layout(0, [])
        if data.resident is not None:
            resident = data.resident
            return Layout(data.size, None, lambda: io.BytesIO(resident))
        label = f"ntfs MFT record {node.number}" + (f" stream {stream!r}" if stream else "")
        valid = min(data.initialized, data.size)
        runs = runs_from_clusters(data.runs, self.fs.cluster_size, 0, valid, label)
        if valid < data.size:  # past the valid data length the stream reads as zeros
            runs.append((valid, None, data.size - valid))
        return Layout(data.size, runs)



def _perm(lx: dict[str, int]) -> int | None:
    """The permission bits of WSL's ``$LXMOD`` (the file's type is the record's, not the EA's)."""
    mode = lx.get("mode")
    return None if mode is None else stat.S_IMODE(mode)
