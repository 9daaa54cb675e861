"""wimlib's XPRESS and LZX compressors and decompressors through ctypes: the peer implementation our WOF
decoders are checked against (``libwim.so.15``, Debian's ``libwim15``, installed by ``scripts/test`` with
``wimtools``).  Its formats are WOF's: XPRESS Huffman with 4, 8 or 16 KiB chunks, LZX with 32 KiB."""

from __future__ import annotations

import ctypes
import functools
import random

XPRESS, LZX = 1, 2
ALGORITHMS = {"XPRESS4K": (0, XPRESS, 4096), "LZX": (1, LZX, 32768), "XPRESS8K": (2, XPRESS, 8192),
              "XPRESS16K": (3, XPRESS, 16384)}  # WOF name → (WOF number, wimlib type, chunk size)


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libwim.so.15")
    lib.wimlib_create_compressor.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_uint,
                                             ctypes.POINTER(ctypes.c_void_p)]
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                    ctypes.c_void_p]
    lib.wimlib_compress.restype = ctypes.c_size_t
    lib.wimlib_free_compressor.argtypes = [ctypes.c_void_p]
    lib.wimlib_create_decompressor.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    lib.wimlib_decompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_void_p]
    lib.wimlib_free_decompressor.argtypes = [ctypes.c_void_p]
    return lib


def compress(kind: int, chunk: int, data: bytes, level: int = 50) -> bytes | None:
    """``data`` (at most ``chunk`` bytes) compressed, or None when it does not shrink."""
    lib = _lib()
    c = ctypes.c_void_p()
    if lib.wimlib_create_compressor(kind, chunk, level, ctypes.byref(c)):
        raise RuntimeError("wimlib_create_compressor failed")
    try:
        out = ctypes.create_string_buffer(max(1, len(data)))
        n = lib.wimlib_compress(data, len(data), out, max(0, len(data) - 1), c)
        return out.raw[:n] if n else None
    finally:
        lib.wimlib_free_compressor(c)


def decompress(kind: int, chunk: int, data: bytes, size: int) -> bytes | None:
    """wimlib's decoding of one chunk to ``size`` bytes, or None when wimlib rejects it."""
    lib = _lib()
    d = ctypes.c_void_p()
    if lib.wimlib_create_decompressor(kind, chunk, ctypes.byref(d)):
        raise RuntimeError("wimlib_create_decompressor failed")
    try:
        out = ctypes.create_string_buffer(max(1, size))
        return None if lib.wimlib_decompress(data, len(data), out, size, d) else out.raw[:size]
    finally:
        lib.wimlib_free_decompressor(d)


def wof_stream(algorithm: str, data: bytes, level: int = 50) -> bytes:
    """A ``WofCompressedData`` stream of ``data`` as Windows writes it: the chunk offset table, then each
    chunk compressed, or stored as is where compression does not shrink it."""
    _, kind, chunk = ALGORITHMS[algorithm]
    chunks = []
    for at in range(0, len(data), chunk):
        piece = data[at : at + chunk]
        chunks.append(compress(kind, chunk, piece, level) or piece)
    entry = 4 if len(data) <= 0xFFFFFFFF else 8
    table, pos = bytearray(), 0
    for c in chunks[:-1]:
        pos += len(c)
        table += pos.to_bytes(entry, "little")
    return bytes(table) + b"".join(chunks)


def wof_reparse(algorithm: int, provider: int = 2, version: int = 1) -> bytes:
    """The ``system.ntfs_reparse_data`` value of a WOF file: the reparse header, then WOF_EXTERNAL_INFO and
    FILE_PROVIDER_EXTERNAL_INFO_V1."""
    body = version.to_bytes(4, "little") + provider.to_bytes(4, "little") + (1).to_bytes(4, "little") + \
        algorithm.to_bytes(4, "little")
    return (0x80000017).to_bytes(4, "little") + len(body).to_bytes(2, "little") + bytes(2) + body


def damage(packed: bytes, rnd: random.Random, how: int) -> bytes:
    """``packed`` with one kind of damage: bits flipped (0), cut (1), bytes appended (2) or inserted (3)."""
    bad = bytearray(packed)
    if how == 0:
        for _ in range(rnd.randrange(1, 4)):
            bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
    elif how == 1:
        del bad[rnd.randrange(len(bad)) :]
    elif how == 2:
        bad += rnd.randbytes(rnd.randrange(1, 64))
    else:
        at = rnd.randrange(len(bad))
        bad[at:at] = rnd.randbytes(rnd.randrange(1, 4))
    return bytes(bad)
