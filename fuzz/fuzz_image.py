"""Fuzz the image loader and the recovery scan with whole image files.

Input: a mode byte, then the bytes of an image file; with bit 0 of the mode, the frames' CRC-32s, the
trailer's frame CRCs and the seek table are recomputed first (``_common.fix_image``), so mutations
get past them.  The image is opened as a finished image (layout checks, a few reads,
extents, a quick verify) and then continued as a partial image (header, frame walk, prefix decode,
truncation), as ``image --resume`` does.
"""

from __future__ import annotations

import os

import atheris

with atheris.instrument_imports():
    from _common import fix_image, fuzz_main, scratch_dir

    from imaging_utility.errors import Error
    from imaging_utility.format.codec import Codec
    from imaging_utility.image.digests import SUPPORTED
    from imaging_utility.image.reader import ImageReader
    from imaging_utility.image.recover import read_header, recover
    from imaging_utility.storage import open_partial

DIR = scratch_dir()
PATH = os.path.join(DIR, "image")
CODEC = Codec(1)


def _read(path: str) -> None:
    with ImageReader([path], cache_bytes=1 << 20, readahead=0) as reader:
        n = reader.chunk_count
        for index in sorted({0, n // 2, n - 1}):
            if 0 <= index < n:
                offset = index * reader.chunk_size
                reader.read(offset, min(4096, reader.size - offset))
        reader.extents(0, reader.size)
        reader.verify(quick=True, samples=2, seed=1, threads=1)


def _resume(path: str) -> None:
    partial = open_partial(path, None)
    try:
        header = read_header(partial)
        if header is None:
            return
        names = tuple(n for n in header.meta.get("digests", []) if n in SUPPORTED)
        rec = recover(partial, header, names, CODEC, 1)
        rec.writer.close()
    finally:
        partial.close()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    raw = fix_image(data[1:]) if data[0] & 1 else data[1:]
    with open(PATH, "wb") as fh:
        fh.write(raw)
    try:
        _read(PATH)
    except Error:
        pass
    try:
        _resume(PATH)
    except Error:
        pass


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
