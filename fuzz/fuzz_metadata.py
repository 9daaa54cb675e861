"""Fuzz the metadata decoders: header, trailer and event frames, range lists, the META schema.

Input: a byte choosing the frame type (bits 0-1) and whether to recompute the frame's CRC-32 first (bit 2:
so mutations get past it), then a frame's user data.  Beyond not crashing, a frame that decodes must
encode and decode back to the same value.
"""

from __future__ import annotations

import zlib

import atheris

with atheris.instrument_imports():
    from _common import fuzz_main

    from imaging_utility.errors import Error
    from imaging_utility.format.metaframe import Event, Header, Trailer, decode_ranges


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 4, data[1:]
    if data[0] & 4 and len(body) >= 4:
        body = body[:-4] + zlib.crc32(body[:-4]).to_bytes(4, "little")
    try:
        if kind == 0:
            header = Header.decode(body, 8)
            assert Header.decode(header.encode()[8:]) == header
        elif kind == 1:
            trailer = Trailer.decode(body, 8)
            assert Trailer.decode(trailer.encode()[8:]) == trailer
        elif kind == 2:
            event = Event.decode(body, 8)
            assert Event.decode(event.encode()[8:]) == event
            event.check_chunk(64 * 1024, 1 << 40)
        else:
            decode_ranges(body, 1 << 40, "fuzz")
    except Error:
        pass


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
