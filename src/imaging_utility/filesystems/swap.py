"""Linux swap (version 1, ``SWAPSPACE2``): used-only keeps the signature page only.

Spec: Linux ``include/linux/swap.h`` (``union swap_header``) and util-linux ``mkswap.c``: the first page
holds 1024 bytes of boot area, then ``version``, ``last_page``, ``nr_badpages``, the 16-byte UUID and the
16-byte label; the page ends in the 10-byte magic.  The page size is not recorded anywhere else: it is
where the magic sits (4 KiB on x86-64 and most others; 8/16/64 KiB on some arm64, ppc64 and sparc
kernels).  Integers are in the byte order of the machine that ran ``mkswap``.

Swap content is worthless after a reboot, so only that first page is kept; the rest reads back as zeros
and the volume still activates (``swapon``) with the same UUID and label.  A swap area holding a
hibernation image has another magic (``S1SUSPEND``, ``S2SUSPEND``, ...) and is not recognised here, so it
is kept in full.  Version 0 (``SWAP-SPACE``, kernels before 2.2) is not recognised either.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from ..blocks import BlockSource, read_at
from ..errors import UnsupportedError

MAGIC = b"SWAPSPACE2"
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
INFO_OFFSET = 1024
# version, last_page, nr_badpages, sws_uuid, sws_volume (the label); little- and big-endian
c_swap_info = {order: struct.Struct(order + "III16s16s") for order in ("<", ">")}
MAX_BADPAGES = 637  # what fits in the first 4 KiB page after the info fields (mkswap's own limit)


@dataclass(frozen=True, slots=True)
class SwapHeader:
    page_size: int
    last_page: int
    label: str | None
    uuid: str | None

    @property
    def volume_size(self) -> int:
        return (self.last_page + 1) * self.page_size


def probe(source: BlockSource) -> SwapHeader | None:
    """The swap header at offset 0, ``None`` when there is no ``SWAPSPACE2`` magic.

    Raises ``UnsupportedError`` when the magic is there but the header fields are impossible.
    """
    for page in PAGE_SIZES:
        if source.size < page:
            break
        if read_at(source, page - len(MAGIC), len(MAGIC)) == MAGIC:
            return _parse(read_at(source, 0, INFO_OFFSET + 64), page)
    return None


def _parse(head: bytes, page: int) -> SwapHeader:
    for layout in c_swap_info.values():
        version, last_page, nr_bad, raw_uuid, raw_label = layout.unpack_from(head, INFO_OFFSET)
        if version == 1:
            break
    else:
        raise UnsupportedError(f"Linux swap signature found but its header version is {version:#x}, not 1")
    if last_page < 1 or nr_bad > MAX_BADPAGES:
        raise UnsupportedError(f"Linux swap header is inconsistent: last_page {last_page}, "
                               f"{nr_bad} bad pages")
    label = raw_label.split(b"\0", 1)[0].decode("utf-8", "replace") or None
    ident = str(uuid.UUID(bytes=raw_uuid)) if raw_uuid.strip(b"\0") else None
    return SwapHeader(page, last_page, label, ident)


def used_ranges(source: BlockSource, sw: SwapHeader) -> Iterator[tuple[int, int]]:
    """The signature page: boot area, header, UUID, label and magic."""
    yield 0, sw.page_size
