"""How a capture reads its source: plainly, or like GNU ddrescue (``--rescue``), optionally throttled."""

from __future__ import annotations

from ..blocks import BlockSource
from ..devices.rescue import RescueReader
from ..devices.throttle import Throttle
from ..errors import SourceIOError
from .capture import ChunkReader


def chunk_reader(source: BlockSource, label: str, rescue: bool, retries: int,
                 throttle: Throttle | None) -> ChunkReader:
    """A ``ChunkReader`` over ``source`` (named ``label`` in errors).

    Without ``rescue`` the first unreadable sector stops the capture with ``SourceIOError`` naming it;
    with it, unreadable ranges are retried ``retries`` times, zero-filled and returned.
    """
    rescuer = RescueReader(source, retries=retries) if rescue else None
    locate = RescueReader(source, retries=0)

    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        if throttle is not None:
            throttle.consume(len(buf))
        if rescuer is not None:
            return rescuer.read_chunk(offset, buf)
        try:
            source.readinto_at(offset, buf)
        except SourceIOError:
            # Name the first unreadable sector, not just the start of the failed chunk.
            bad = locate.read_chunk(offset, buf)
            if not bad:
                return []  # the retry read everything: a transient error
            sector = bad[0][0] // source.sector_size
            raise SourceIOError(
                f"read error on {label} at byte {bad[0][0]} (sector {sector}): input/output error; "
                "add --rescue to image past unreadable sectors (the partial image continues with --resume)",
                offset=bad[0][0],
            ) from None
        return []

    return read
