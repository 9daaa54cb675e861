"""The one read contract: ``BlockSource``.

Image readers, devices, partition windows and filesystem streams offer it;
NBD, FUSE, WebDAV, restore and export consume it.

Contract:
  * ``readinto_at(offset, buf)`` fills ``buf`` exactly or raises.  It is
    positional (no shared file position) and safe to call from many threads.
    Reading past ``size`` raises ``ValueError``.
  * ``extents(offset, length)`` describes ``[offset, offset+length)`` as
    ``Extent``s of kind data / zero / unallocated / unreadable, in order and
    covering the range exactly.  A source that knows nothing says DATA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

from .extents import Extent, ExtentKind


@runtime_checkable
class BlockSource(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def sector_size(self) -> int: ...

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None: ...

    def extents(self, offset: int, length: int) -> list[Extent]: ...


def read_at(source: BlockSource, offset: int, length: int) -> bytes:
    """Convenience: ``length`` bytes at ``offset`` (clipped to the source's end)."""
    length = max(0, min(length, source.size - offset))
    buf = bytearray(length)
    if length:
        source.readinto_at(offset, buf)
    return bytes(buf)


def check_range(size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"range [{offset}, {offset + length}) outside source of {size} bytes")


class WindowSource:
    """A ``[offset, offset+length)`` window of another source (a partition, ``--offset/--length``)."""

    def __init__(self, base: BlockSource, offset: int, length: int) -> None:
        check_range(base.size, offset, length)
        self.base = base
        self.offset = offset
        self._size = length

    @property
    def size(self) -> int:
        return self._size

    @property
    def sector_size(self) -> int:
        return self.base.sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self._size, offset, len(buf))
        self.base.readinto_at(self.offset + offset, buf)

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        return [
            Extent(e.offset - self.offset, e.length, e.kind)
            for e in self.base.extents(self.offset + offset, length)
        ]


class MappedSource(ABC):
    """A volume whose bytes lie in pieces of ``base`` (a logical volume's segments, a dynamic volume's
    pieces); a subclass gives ``size`` and ``_map``.  Thread-safe if ``base`` is."""

    base: BlockSource
    MAX_EXTENTS = 4096  # a finely striped volume: past this many, the rest is described as data

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    def sector_size(self) -> int:
        return self.base.sector_size

    @abstractmethod
    def _map(self, offset: int, want: int) -> tuple[int, int]:
        """(offset in ``base``, bytes contiguous there, at most ``want``) for volume ``offset``."""

    def pieces(self, limit: int = 65536) -> list[tuple[int, int, int]] | None:
        """``(volume offset, offset in base, length)`` of each contiguous piece, in volume order; None when
        there are more than ``limit`` (a finely striped volume)."""
        out: list[tuple[int, int, int]] = []
        pos = 0
        while pos < self.size:
            at, n = self._map(pos, self.size - pos)
            if out and out[-1][1] + out[-1][2] == at:
                out[-1] = (out[-1][0], out[-1][1], out[-1][2] + n)
            elif len(out) == limit:
                return None
            else:
                out.append((pos, at, n))
            pos += n
        return out

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self.size, offset, len(buf))
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            at, n = self._map(offset + done, len(view) - done)
            self.base.readinto_at(at, view[done : done + n])
            done += n

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self.size, offset, length)
        out: list[Extent] = []
        pos = offset
        while pos < offset + length:
            at, n = self._map(pos, offset + length - pos)
            out.extend(Extent(e.offset - at + pos, e.length, e.kind) for e in self.base.extents(at, n))
            pos += n
            if len(out) > self.MAX_EXTENTS:
                out.append(Extent(pos, offset + length - pos, ExtentKind.DATA))
                break
        return out


class BytesSource:
    """An in-memory source; for tests and small metadata blobs."""

    def __init__(self, data: bytes, sector_size: int = 512) -> None:
        self._data = memoryview(data)
        self._sector_size = sector_size

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def sector_size(self) -> int:
        return self._sector_size

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        check_range(self.size, offset, len(buf))
        buf[:] = self._data[offset : offset + len(buf)]

    def extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self.size, offset, length)
        return [Extent(offset, length, ExtentKind.DATA)] if length else []
