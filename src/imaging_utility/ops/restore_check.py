"""``restore --verify`` for disks and partitions: read back what was written and compare per partition.

Images made by ``backup-disk`` or ``image --used-only DISK`` carry each partition's digest (its stored
bytes in order, docs/backup-sets.md); the target's bytes at the same ranges are read again with
``O_DIRECT`` on a device (so the page cache cannot answer for the disk) and hashed.  An image without
partition digests (a full image of a disk) is compared byte for byte with the image instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..devices.source import FileSource
from ..errors import VerificationError
from ..image.digests import SUPPORTED, Digests
from ..image.reader import ImageReader
from ..partitions import read_partitions

READ = 4 << 20


@dataclass
class PartitionCheck:
    number: int
    method: str  # the digest name, or "bytes" when compared with the image
    expected: str | None
    actual: str | None
    ok: bool


def stored_partition_digests(reader: ImageReader) -> dict[str, dict[str, str]]:
    found = (reader.trailer.meta if reader.trailer else {}).get("partition_digests")
    return found if isinstance(found, dict) else {}


def _ranges(reader: ImageReader, offset: int, length: int) -> list[tuple[int, int]]:
    if reader.allocation is None:
        return [(offset, length)]
    return reader.allocation.used_in(offset, length)


def _pieces(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(o + at, min(READ, n - at)) for o, n in ranges for at in range(0, n, READ)]


def check_partition(reader: ImageReader, target: FileSource, number: int, offset: int, length: int,
                    shift: int) -> PartitionCheck:
    """Compare image bytes ``[offset, offset+length)`` (partition ``number``) with the target's bytes at
    ``offset + shift``."""
    stored = stored_partition_digests(reader).get(str(number), {})
    names = [n for n in stored if n in SUPPORTED]
    ranges = _ranges(reader, offset, length)
    if names:
        digests = Digests(names[:1])
        for o, n in _pieces(ranges):
            buf = bytearray(n)
            target.readinto_at(o + shift, buf)
            digests.update(buf)
        actual = digests.hexdigests()[names[0]]
        expected = stored[names[0]]
        return PartitionCheck(number, names[0], expected, actual, actual == expected)
    for o, n in _pieces(ranges):
        got = bytearray(n)
        target.readinto_at(o + shift, got)
        want = bytearray(n)
        reader.readinto_at(o, want)
        if got != want:
            at = o + next(i for i in range(n) if got[i] != want[i])
            return PartitionCheck(number, "bytes", None, f"differs at image byte {at}", False)
    return PartitionCheck(number, "bytes", None, None, True)


def verify_written(reader: ImageReader, path: str, device: bool, parts: list[tuple[int, int, int]],
                   shift: int = 0) -> list[PartitionCheck]:
    """Check each ``(number, image offset, length)``; raises ``VerificationError`` naming the first bad one."""
    with FileSource(path, direct=device) as target:
        checks = [check_partition(reader, target, number, offset, length, shift) for number, offset, length in parts]
    bad = [c for c in checks if not c.ok]
    if bad:
        c = bad[0]
        detail = c.actual if c.method == "bytes" else f"{c.method} {c.actual}, expected {c.expected}"
        raise VerificationError(f"partition {c.number} on {path} does not match the image: {detail}")
    return checks


def verify_image_partition(reader: ImageReader, number: int) -> PartitionCheck:
    """Decode partition ``number``'s stored ranges (each chunk is checked as it is decoded) and compare the
    partition's digest with the one stored in the image, when there is one."""
    part = read_partitions(reader).get(number)
    stored = stored_partition_digests(reader).get(str(number), {})
    names = [n for n in stored if n in SUPPORTED][:1]
    digests = Digests(names)
    for o, n in _pieces(_ranges(reader, part.offset, part.length)):
        buf = bytearray(n)
        reader.readinto_at(o, buf)
        digests.update(buf)
    if not names:
        return PartitionCheck(number, "chunks", None, None, True)
    actual = digests.hexdigests()[names[0]]
    return PartitionCheck(number, names[0], stored[names[0]], actual, actual == stored[names[0]])
