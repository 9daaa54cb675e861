"""dissect.ntfs with the attribute values it reads whole bounded: import ``NTFS`` from here.

dissect.ntfs parses four attribute types by reading their whole value (``AttributeRecord.from_fh`` →
``fh.read()``): ``$STANDARD_INFORMATION``, ``$ATTRIBUTE_LIST``, ``$FILE_NAME`` and ``$REPARSE_POINT``.
A record that claims one of them non-resident with a size of gigabytes (sparse runs cost nothing on the
disk) made it allocate that much: a 4 MiB volume found by the fuzzer took 9.9 GB and 20 s to open.  On a
sound volume the first and third are resident and small, an attribute list holds at most 256 KiB (the
format's limit) and a reparse point 16 KiB.  So each parser is wrapped: a value over
``ATTRIBUTE_VALUE_MAX`` raises ``OversizedAttribute`` (a ``CorruptImageError``: the file, or the volume
when it is a system record, is reported damaged in one line) before a byte is read.  Importing this
module installs the bound once; it changes only those four entries of dissect's ``ATTRIBUTE_CLASS_MAP``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO

from dissect.ntfs import NTFS
from dissect.ntfs import attr as _attr

from ..errors import CorruptImageError

__all__ = ["ATTRIBUTE_VALUE_MAX", "NTFS", "OversizedAttribute"]

ATTRIBUTE_VALUE_MAX = 256 << 10  # $ATTRIBUTE_LIST's limit, the largest value of the four


class OversizedAttribute(CorruptImageError):
    """An attribute that dissect reads whole claims more than such an attribute can hold."""


def _bounded(parse: Callable[..., Any], what: str) -> Callable[..., Any]:
    def bounded(fh: BinaryIO, record: Any = None) -> Any:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        if size > ATTRIBUTE_VALUE_MAX:
            segment = getattr(record, "segment", None)
            where = "an MFT record" if segment is None else f"MFT record {segment}"
            raise OversizedAttribute(f"the ${what} of {where} claims {size} bytes (at most {ATTRIBUTE_VALUE_MAX})")
        return parse(fh, record)

    bounded._iu_bounded = True  # type: ignore[attr-defined]
    return bounded


for _type, _parse in list(_attr.ATTRIBUTE_CLASS_MAP.items()):
    if not getattr(_parse, "_iu_bounded", False):
        _attr.ATTRIBUTE_CLASS_MAP[_type] = _bounded(_parse, _type.name)
