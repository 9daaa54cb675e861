"""ext2/3/4 adapter of ``tree.FileTree``.

Nodes are dissect.extfs ``INode`` objects (their fields: mode, times, links, xattrs), but every
inode's bytes are read here (``ext_inode.ExtVolume``) at the location our own group table gives,
so 128-byte inodes, revision 0, META_BG and bigalloc volumes are read right; and a file's data,
a symlink's target and a directory's entries come from ``ext_inode``, which checks every claim
(extents inside the volume, sizes bounded by what is mapped, inline data in ``i_block`` and
``system.data``).  Names are decoded as UTF-8 with ``surrogateescape``, so any byte sequence
round-trips.
"""

from __future__ import annotations

import io
import stat
import struct
from collections.abc import Iterator
from typing import Any

from dissect.extfs import ExtFS
from dissect.extfs.extfs import INode

from ..blocks import BlockSource, read_at
from ..errors import CorruptImageError, Error
from . import c_ext as c
from . import ext_meta
from .ext import ExtSuper
from .ext_inode import ExtVolume
from .ext_journal import replay
from .tree import KINDS, BlockFile, Entry, Layout, runs_from_clusters

ROOT_INO = 2
FAST_SYMLINK_MAX = 60
MAX_SYMLINK = 65536


class _Patched(BlockFile):
    """The volume with a few superblock bytes overlaid, for dissect: it refuses bigalloc (it never
    needs the bitmaps, and files are addressed in blocks either way) and would size revision 0
    inodes as 0 bytes."""

    def __init__(self, fh: BlockFile, patches: dict[int, bytes]) -> None:
        super().__init__(fh.source)
        self.patches = patches

    def readinto(self, buf: Any) -> int:
        start = self._pos
        n = super().readinto(buf)
        view = memoryview(buf).cast("B")
        for at, data in self.patches.items():
            lo, hi = max(at, start), min(at + len(data), start + n)
            if lo < hi:
                view[lo - start : hi - start] = data[lo - at : hi - at]
        return n


def _dissect_fs(fh: BlockFile, sb: ExtSuper) -> ExtFS:
    log_block = sb.block_size.bit_length() - 11
    patches = {c.SUPERBLOCK_OFFSET + 0x1C: log_block.to_bytes(4, "little")}  # s_log_cluster_size
    if sb.rev_level == c.GOOD_OLD_REV:
        patches[c.SUPERBLOCK_OFFSET + 0x58] = c.GOOD_OLD_INODE_SIZE.to_bytes(2, "little")
    return ExtFS(_Patched(fh, patches))


def recovered(source: BlockSource) -> tuple[BlockSource, str | None]:
    """``source`` as the kernel's journal recovery would leave it (replayed in memory, nothing written),
    and the warning to show; the source unchanged and no warning when the journal is clean."""
    sb = ExtSuper.from_bytes(read_at(source, c.SUPERBLOCK_OFFSET, 1024))
    if sb is None or not sb.incompat & c.INCOMPAT_RECOVER:
        return source, None
    lead = f"{sb.kind}: the journal needs recovery (mounted, or not cleanly unmounted)"
    try:
        replayed, summary = replay(source, sb, ExtVolume(source, sb))
    except (Error, ValueError, IndexError, struct.error) as e:
        replayed, summary = None, f"it cannot be replayed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if replayed is None:
        return source, (f"{lead} and {summary}: its files are shown as last written in place, without the "
                        "journal's changes")
    if not replayed.blocks:
        return source, f"{lead}, but {summary}: nothing to replay"
    return replayed, f"{lead}: {summary}; nothing is written to the image"


class ExtBackend:
    dot_entries = False  # ``ExtVolume.entries`` leaves out the directory's own "." and ".."
    case_insensitive = False

    def __init__(self, fh: BlockFile, kind: str) -> None:
        sb = ExtSuper.from_bytes(read_at(fh.source, c.SUPERBLOCK_OFFSET, 1024))
        if sb is None:
            raise CorruptImageError(f"{kind}: the superblock is gone")
        self.sb = sb
        self.vol = ExtVolume(fh.source, sb)
        self.fs = _dissect_fs(fh, sb)
        self.fs_type = kind
        self.warnings: list[str] = []

    def root(self) -> INode:
        return self._inode(ROOT_INO)

    def label(self, node: INode) -> str:
        return f"inode {node.inum}"

    def _inode(self, ino: int) -> INode:
        raw = self.vol.raw_inode(ino)
        node = INode(self.fs, ino)
        node.__dict__["inode"] = c.parse_inode(raw)  # dissect's cached_property, filled from our read and parse
        node.__dict__["raw"] = raw
        return node

    def children(self, node: INode) -> Iterator[tuple[str, Any]]:
        for name, ino in self.vol.entries(node.__dict__["raw"], int(node.inum)):
            yield name.decode("utf-8", "surrogateescape"), ino

    def load(self, ref: int) -> INode:
        node = self._inode(ref)
        if node.inode.i_mode == 0 and node.inode.i_links_count == 0:
            raise CorruptImageError(f"{self.fs_type}: inode {ref} is not in use (zeroed or deleted)")
        return node

    def key(self, node: INode) -> int | None:
        return int(node.inum)

    def _readable(self, node: INode) -> None:
        """An fscrypt inode holds ciphertext (and a directory, encrypted names): never handed out as data."""
        if self.vol.flags_of(node.__dict__["raw"]) & c.EXT4_ENCRYPT_FL:
            raise CorruptImageError(f"{self.fs_type} inode {node.inum} is encrypted (fscrypt): its names and data "
                                    "cannot be read without its key, which no image holds")

    def describe(self, node: INode, name: str, path: str) -> Entry:
        self._readable(node)
        mode = int(node.inode.i_mode)
        kind = KINDS.get(stat.S_IFMT(mode), "other")
        target = None
        if kind == "symlink":
            target = self._read_all(node).decode("utf-8", "surrogateescape")
        uid, gid = ext_meta.owner(node)
        return Entry(name=name, path=path, type=kind, size=int(node.size) if kind in ("file", "symlink") else 0,
                     mtime_ns=int(node.mtime_ns), mode=stat.S_IMODE(mode), target=target, inode=int(node.inum),
                     nlink=int(node.inode.i_links_count), uid=uid, gid=gid, atime_ns=int(node.atime_ns),
                     rdev=ext_meta.device(node) if kind in ("char", "block") else None)

    def xattrs(self, node: INode) -> list[tuple[str, bytes]]:
        return ext_meta.xattrs(self.vol, node.__dict__["raw"], int(node.inum), self._value)

    def _value(self, ino: int, size: int) -> bytes:
        """An attribute value kept as the data of inode ``ino`` (ea_inode): its first ``size`` bytes."""
        return self._read_all(self.load(ino))[:size]

    def _read_all(self, node: INode) -> bytes:
        """A symlink target or an attribute value: small by definition, so a bigger claim is damage."""
        if node.size > MAX_SYMLINK:
            raise CorruptImageError(f"{self.fs_type} inode {node.inum} claims {node.size} bytes for a symlink "
                                    f"target or attribute value (at most {MAX_SYMLINK})")
        layout = self.layout(node, None)
        if layout.opener is not None:
            return layout.opener().read()
        out = bytearray()
        for _f, disk, n in layout.runs or []:
            if disk is None:
                out += bytes(n)
            else:
                buf = bytearray(n)
                self.vol.source.readinto_at(disk, buf)
                out += buf
        return bytes(out)

    def _fast_symlink(self, node: INode) -> bool:
        """A symlink whose target sits in ``i_block``: no data blocks (``i_blocks`` counts an
        extended-attribute block too, so that one is subtracted)."""
        if not stat.S_ISLNK(node.inode.i_mode) or node.size >= FAST_SYMLINK_MAX:
            return False
        blocks = int(node.inode.i_blocks_lo)
        if node.inode.i_file_acl_lo or node.inode.i_file_acl_high:  # the attribute block's cluster
            blocks -= self.sb.block_size * self.sb.cluster_ratio // 512
        return blocks <= 0

    def layout(self, node: INode, stream: str | None) -> Layout:
        self._readable(node)
        raw: bytes = node.__dict__["raw"]
        size = int(node.size)
        if not size:
            return Layout(0, [])
        ino = int(node.inum)
        if self.vol.flags_of(raw) & c.EXT4_INLINE_DATA_FL:
            data = self.vol.inline_data(raw, ino)
            return Layout(size, None, lambda: io.BytesIO(data))
        if self._fast_symlink(node):
            data = raw[c.INODE_BLOCK_OFFSET : c.INODE_BLOCK_OFFSET + size]
            return Layout(size, None, lambda: io.BytesIO(data))
        runs = self.vol.runs(raw, ino)
        return Layout(size, runs_from_clusters(runs, self.sb.block_size, 0, size, f"{self.fs_type} inode {ino}"))

