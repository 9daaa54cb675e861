"""XPRESS Huffman chunks of WOF-compressed NTFS files (``compact /exe:xpress4k|8k|16k``), decoded here.

The format is Microsoft's "LZ77+Huffman" ([MS-XCA] 2.1–2.2) as WOF uses it: each chunk of 4, 8 or
16 KiB is compressed on its own, so its data is one block: 256 bytes holding the 4-bit codeword lengths
of 512 symbols, then a bitstream of little-endian 16-bit words read from the high bit down.  Symbols
below 256 are literals; a symbol ``256 + 16·k + l`` is a match of offset ``2**k + (k more bits)`` and
length ``l + 3``, where ``l == 15`` takes one more byte, and that byte == 255 a 16-bit length instead.
Extra bytes are read from the byte stream after the words loaded so far, exactly as wimlib's
``xpress_decompress.c`` (which ntfs-3g's system-compression plugin uses) reads them.

Bounds: the output is exactly ``size`` bytes, a match may neither start before the output nor run past
``size``, and the codeword lengths must form a complete prefix code.  Where wimlib reads zero bits past
the end of the input, this decoder lets the bit buffer look ahead into such padding but never takes data
from it: a chunk whose symbols need bits or bytes past its end is cut short, and an error.
"""

from __future__ import annotations

from ..errors import CorruptImageError
from .wof_huffman import SUB, canonical

NUM_SYMBOLS = 512
MAX_LEN = 15
MIN_MATCH = 3
MAX_CHUNK = 1 << 16


def _word(src: bytes, pos: int, bits: int, padding: int) -> tuple[int, int, int]:
    """The bit buffer with the next 16-bit word below its bits (zeros, counted in ``padding``, past the end
    of ``src``), and the new ``pos`` and ``padding``."""
    if len(src) - pos >= 2:
        return bits << 16 | src[pos] | src[pos + 1] << 8, pos + 2, padding
    return bits << 16, pos, padding + 1


def decompress(data: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    """One chunk decoded to exactly ``size`` bytes (1 ≤ size ≤ 64 KiB)."""
    if not 1 <= size <= MAX_CHUNK:
        raise CorruptImageError(f"{what}: a chunk of {size} bytes is outside XPRESS's 1..{MAX_CHUNK}")
    src = bytes(data)
    end = len(src)
    if end < NUM_SYMBOLS // 2:
        raise CorruptImageError(f"{what}: {end} bytes cannot hold the Huffman table of an XPRESS chunk")
    lens: list[int] = []
    for b in src[: NUM_SYMBOLS // 2]:
        lens.append(b & 15)
        lens.append(b >> 4)
    table, root, longest = canonical(lens, 0, NUM_SYMBOLS, MAX_LEN, "XPRESS Huffman", what)
    if not longest:
        # wimlib accepts an empty code, which then decodes symbol 0 from no bits; a chunk that has data
        # to give always has symbols, so an empty code is damage as any other incomplete one.
        raise CorruptImageError(f"{what}: the XPRESS Huffman code is incomplete (it has no codewords)")

    out = bytearray()
    pos = NUM_SYMBOLS // 2  # the next byte of input
    bits = 0  # the bit buffer: ``have`` bits, the next one the highest
    have = 0
    padding = 0  # 16-bit words of zeros loaded past the end (look-ahead only)
    top, sub = (1 << root) - 1, (1 << (longest - root)) - 1
    while len(out) < size:
        if have < MAX_LEN:  # wimlib's bitstream_ensure_bits(15): one word at most
            bits, pos, padding = _word(src, pos, bits, padding)
            have += 16
        entry = table[(bits >> (have - root)) & top]
        if entry >= SUB:  # a codeword longer than the root's bits: its subtable
            entry = table[((entry - SUB) >> 5) + ((bits >> (have - longest)) & sub)]
        have -= entry & 31
        bits &= (1 << have) - 1
        sym = entry >> 5
        if sym < 256:
            out.append(sym)
            continue
        length = sym & 15
        log2 = (sym >> 4) & 15
        if have < 16:  # bitstream_ensure_bits(16)
            bits, pos, padding = _word(src, pos, bits, padding)
            have += 16
        have -= log2
        offset = (1 << log2) | (bits >> have)
        bits &= (1 << have) - 1
        if length == 15:
            if pos >= end:
                raise CorruptImageError(f"{what}: the chunk ends inside a match length")
            length += src[pos]
            pos += 1
            if length == 15 + 255:
                if end - pos < 2:
                    raise CorruptImageError(f"{what}: the chunk ends inside a match length")
                length = src[pos] | src[pos + 1] << 8
                pos += 2
        length += MIN_MATCH
        if padding * 16 > have:
            raise CorruptImageError(f"{what}: the chunk ends before its data does")
        done = len(out)
        if offset > done:
            raise CorruptImageError(f"{what}: a match reaches {offset} bytes back from byte {done}")
        if length > size - done:
            raise CorruptImageError(f"{what}: a match runs past the chunk's {size} bytes")
        start = done - offset
        if offset >= length:
            out += out[start : start + length]
        else:
            out += (out[start:] * (length // offset + 1))[:length]
    if padding * 16 > have:
        raise CorruptImageError(f"{what}: the chunk ends before its data does")
    return bytes(out)
