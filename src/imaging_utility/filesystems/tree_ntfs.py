"""NTFS adapter of ``tree.FileTree`` over dissect.ntfs.

Names come from the directory index ($I30) entries' $FILE_NAME keys (DOS 8.3 aliases left out), so
a hard link is listed once per name and a damaged MFT record still shows its name.  The NTFS
metafiles ($MFT, $Bitmap, … $Extend) are hidden from the root listing, as Windows hides them.
Data runs come from the $DATA attribute's mapping pairs (``MftRecord.dataruns``); resident and
compressed data is read through dissect's streams instead.
"""

from __future__ import annotations

from typing import Any

from dissect.ntfs import NTFS
from dissect.ntfs.c_ntfs import ATTRIBUTE_FLAG_COMPRESSION_MASK, ATTRIBUTE_TYPE_CODE, FILE_NAME_DOS
from dissect.ntfs.index import IndexEntry
from dissect.ntfs.mft import MftRecord
from dissect.ntfs.util import segment_reference

from ..errors import CorruptImageError
from .tree import BlockFile, Entry, Layout, runs_from_clusters

FIRST_USER_RECORD = 24  # records 0-23 are reserved for metafiles
RECORD_IN_USE = 0x0001


class NtfsBackend:
    fs_type = "ntfs"
    case_insensitive = True

    def __init__(self, fh: BlockFile) -> None:
        self.fs = NTFS(fh)
        if self.fs.mft is None:
            raise CorruptImageError("ntfs: the $MFT could not be opened")

    def root(self) -> MftRecord:
        return self.fs.mft.get(5)

    def label(self, node: MftRecord) -> str:
        return f"MFT record {node.segment}"

    def children(self, node: MftRecord) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        is_root = node.segment == 5
        for ie in node.index("$I30").entries():
            attr = ie.attribute
            if attr is None or attr.flags == FILE_NAME_DOS:
                continue
            name = attr.file_name
            if is_root and name.startswith("$") and segment_reference(ie.header.FileReference) < FIRST_USER_RECORD:
                continue
            out.append((name, ie))
        return out

    def load(self, ref: IndexEntry) -> MftRecord:
        number = segment_reference(ref.header.FileReference)
        try:
            record = ref.dereference()
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorruptImageError(f"ntfs: MFT record {number} is unreadable: {msg}") from None
        if not record.header.Flags & RECORD_IN_USE:
            raise CorruptImageError(f"ntfs: MFT record {number} is not in use (deleted or damaged)")
        return record

    def key(self, node: MftRecord) -> int | None:
        return int(node.segment) if node.segment is not None else None

    def describe(self, node: MftRecord, name: str, path: str) -> Entry:
        attrs = node.attributes
        mtime: int | None = None
        std = attrs[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        if std:
            mtime = int(std[0].attribute.last_modification_time_ns)
        streams = tuple(sorted({a.name for a in attrs[ATTRIBUTE_TYPE_CODE.DATA] if a.name}))
        target: str | None = None
        if node.is_reparse_point():
            rp = attrs[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0].attribute
            kind = "symlink" if node.is_symlink() else "reparse"
            try:
                target = rp.print_name or rp.substitute_name
            except Exception:
                target = None
            if target is None:
                target = f"reparse tag {int(rp.tag):#010x}"
        elif node.is_dir():
            kind = "dir"
        else:
            kind = "file"
        size = node.size() if kind != "dir" and node.has_stream("") else 0
        return Entry(name=name, path=path, type=kind, size=int(size), mtime_ns=mtime, inode=int(node.segment),
                     nlink=int(node.header.ReferenceCount), streams=streams, target=target)

    def layout(self, node: MftRecord, stream: str | None) -> Layout:
        attrs = node.attributes.find(stream or "", ATTRIBUTE_TYPE_CODE.DATA)
        label = f"ntfs MFT record {node.segment}" + (f" stream {stream!r}" if stream else "")
        if not attrs:
            return Layout(0, [])
        size = int(attrs.size())
        first = attrs[0].header
        if first.resident or first.flags & ATTRIBUTE_FLAG_COMPRESSION_MASK:
            return Layout(size, None, attrs.open)
        cluster = self.fs.cluster_size
        return Layout(size, runs_from_clusters(attrs.dataruns(), cluster, 0, size, label))
