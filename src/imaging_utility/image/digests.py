"""Whole-image digests computed inline (no second pass): SHA-256, BLAKE3, MD5.

The digest covers the image's logical bytes: for a full image that is the
source (compare with ``sha256sum /dev/sdX``).  For a used-only image it covers
only the allocated bytes, in volume order (``update_chunk`` with the allocation
map): hashing gigabytes of never-read free space as zeros would make used-only
imaging cost what the volume's size costs, not what is used; the map itself is
covered by the header's ``allocation_sha256``.  Not thread-safe: feed chunks in
order from one thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..extents import AllocationMap

SUPPORTED = ("sha256", "blake3", "md5")
# Chosen by measurement (docs/performance.md; 2 cores, 2 GiB mixed corpus, median of 3):
# with BLAKE3 imaging runs at 1.12x `zstd -T0 -3`, with SHA-256 (OpenSSL, SHA-NI) at 0.96x,
# with MD5 at 0.89x.  SHA-256 stays one option away (`--hash sha256`) and can be computed
# later from any image with `verify --hash sha256`, which equals `sha256sum` of the source.
# Every chunk also carries its own checksums, so integrity never depends on this set.
DEFAULT = ("blake3",)


def parse_hash_names(spec: str) -> tuple[str, ...]:
    """``"sha256,md5"`` → ``("sha256", "md5")``; ``"none"`` → ``()``."""
    if spec.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in SUPPORTED]
    if bad or not names:
        raise UsageError(f"unknown digest {', '.join(bad) or spec!r}; choose from {', '.join(SUPPORTED)} or none")
    return names


def _new(name: str) -> Any:
    if name == "blake3":
        import blake3  # imported here so that parsing --hash (every command's parser) stays light

        return blake3.blake3()
    import hashlib  # with OpenSSL: loaded when a digest is made, not when --hash is parsed

    return hashlib.new(name)


class Digests:
    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._hashers = [_new(n) for n in self.names]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for h in self._hashers:
            h.update(data)

    def update_chunk(self, data: bytes | bytearray | memoryview, offset: int,
                     allocation: AllocationMap | None) -> None:
        """Feed the chunk at image byte ``offset``: all of it, or only its allocated ranges."""
        if not self._hashers:
            return
        if allocation is None:
            self.update(data)
            return
        view = memoryview(data)
        for start, length in allocation.used_in(offset, len(view)):
            self.update(view[start - offset : start - offset + length])

    def hexdigests(self) -> dict[str, str]:
        return {n: h.hexdigest() for n, h in zip(self.names, self._hashers, strict=True)}
