"""Fuzz the decoders of WOF-compressed NTFS files: XPRESS Huffman and LZX chunks, and the chunk table.

Input: a byte choosing what to decode (bits 0-1: XPRESS 4K, 8K, 16K or LZX; bit 2: a whole
``WofCompressedData`` stream through ``WofFile`` instead of one chunk), two bytes of the size wanted, then
the chunk or stream.  Beyond raising only the project's errors, a decoded chunk has exactly the size asked
for, and a stream reads back exactly the file's size.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from _common import fuzz_main

    from imaging_utility.errors import Error
    from imaging_utility.filesystems import wof, wof_lzx, wof_xpress

_KINDS = (("XPRESS4K", 12), ("XPRESS8K", 13), ("XPRESS16K", 14), ("LZX", 15))


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    name, order = _KINDS[data[0] & 3]
    want, body = int.from_bytes(data[1:3], "little"), data[3:]
    try:
        if data[0] & 4:  # a file of ``want`` bytes (up to 64 KiB: a few chunks) read through its stream
            stream = wof.WofFile(wof.Wof(name, order), want, len(body), lambda at, n: body[at : at + n], "fuzz")
            got = stream.read()
            assert len(got) == want, (len(got), want)
            return
        size = want % (1 << order) + 1
        decode = wof_lzx.decompress if name == "LZX" else wof_xpress.decompress
        out = decode(body, size, "fuzz")
        assert len(out) == size, (len(out), size)
    except Error:
        pass


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
