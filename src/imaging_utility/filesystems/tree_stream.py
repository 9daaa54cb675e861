"""Raw streams for ``tree.FileTree``: ``BlockFile`` (a ``BlockSource`` as a file, for dissect),
``FileStream`` (one file's data, read straight from its runs, or through a fallback stream), and
``runs_from_clusters`` (a cluster run list as the byte runs a stream reads)."""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..blocks import BlockSource
from ..errors import CorruptImageError

if TYPE_CHECKING:
    from .tree import FileTree, Layout

__all__ = ["BlockFile", "FileStream", "Seekable", "check_runs", "read_runs", "runs_from_clusters"]


class Seekable(io.RawIOBase):
    """Position bookkeeping shared by the raw streams below: ``size`` bytes, seekable, read-only."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class BlockFile(Seekable):
    """A seekable binary file over ``BlockSource.readinto_at`` for dissect; not thread-safe (the tree's lock is)."""

    def __init__(self, source: BlockSource) -> None:
        super().__init__(source.size)
        self.source = source

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n:
            self.source.readinto_at(self._pos, view[:n])
            self._pos += n
        return n


class FileStream(Seekable):
    """A readable, seekable stream of one file's data; reads never load more than asked for."""

    def __init__(self, tree: FileTree, layout: Layout, label: str) -> None:
        super().__init__(layout.size)
        self._tree = tree
        self._runs = layout.runs
        self._check: Callable[[int, memoryview], None] | None = None
        if layout.check is not None:
            layout_check = layout.check

            def check(disk: int, part: memoryview) -> None:
                with tree._guard(label):
                    layout_check(disk, part)

            self._check = check
        self._starts = [r[0] for r in layout.runs] if layout.runs is not None else []
        self._fallback: IO[bytes] | None = None
        if layout.runs is None and layout.opener is not None:
            with tree._guard(label):
                self._fallback = layout.opener()
        self._label = label

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        if not want:
            return 0
        if self._runs is None:
            return self._read_fallback(view[:want])
        read_runs(self._tree.source, self._runs, self._starts, self._pos, view[:want], self._label, self._check)
        self._pos += want
        return want

    def _read_fallback(self, view: memoryview) -> int:
        assert self._fallback is not None
        with self._tree._guard(self._label):
            self._fallback.seek(self._pos)
            data = self._fallback.read(len(view))
        if len(data) != len(view):
            raise CorruptImageError(f"{self._label}: data ends at {self._pos + len(data)}, size says {self.size}")
        view[:] = data
        self._pos += len(data)
        return len(data)

    def holes(self) -> list[tuple[int, int]]:
        """``(file_offset, length)`` ranges that are sparse holes (read as zeros, not stored)."""
        return [(s, n) for s, d, n in self._runs or [] if d is None]


def read_runs(source: BlockSource, runs: list[tuple[int, int | None, int]], starts: list[int], pos: int,
              view: memoryview, label: str, check: Callable[[int, memoryview], None] | None = None) -> None:
    """Fill ``view`` with the stream's bytes from ``pos``: ``runs`` as in ``Layout`` (holes read as zeros),
    ``starts`` their file offsets; ``check(disk_offset, data)`` sees each piece read."""
    done, want = 0, len(view)
    i = bisect.bisect_right(starts, pos) - 1
    while done < want:
        if i < 0 or i >= len(runs):
            raise CorruptImageError(f"{label}: no data run maps file offset {pos + done}")
        start, disk, length = runs[i]
        rel = pos + done - start
        take = min(want - done, length - rel)
        if take <= 0:
            i += 1
            continue
        part = view[done : done + take]
        if disk is None:
            part[:] = bytes(take)
        else:
            source.readinto_at(disk + rel, part)
            if check is not None:
                check(disk + rel, part)
        done += take
        i += 1


def check_runs(runs: list[tuple[int, int | None, int]], volume_size: int, label: str) -> None:
    """A run outside the volume (a hostile or damaged map) is a ``CorruptImageError`` naming ``label``,
    never a read past the source."""
    for _f, disk, n in runs:
        if disk is not None and (disk < 0 or disk + n > volume_size):
            raise CorruptImageError(f"{label}: its data run at byte {disk} (+{n}) lies outside the volume of "
                                    f"{volume_size} bytes")


def runs_from_clusters(runs: list[tuple[int | None, int]], cluster: int, base: int, size: int,
                       label: str) -> list[tuple[int, int | None, int]]:
    """``(cluster or None, count)`` runs → byte runs clipped to ``size``; a short chain is an error."""
    out: list[tuple[int, int | None, int]] = []
    pos = 0
    for lcn, count in runs:
        if pos >= size:
            break
        length = min(count * cluster, size - pos)
        if length <= 0:
            continue
        out.append((pos, None if lcn is None else base + lcn * cluster, length))
        pos += length
    if pos < size:
        raise CorruptImageError(f"{label}: its clusters hold {pos} bytes but its size is {size}")
    return out
