"""LZX chunks of WOF-compressed NTFS files (``compact /exe:lzx``, "system compression"), decoded here.

The format is LZX as WIM files use it, with a 32 KiB window: each chunk of at most 32 KiB is compressed
on its own, its recent-offset queue R0, R1, R2 starts at 1, 1, 1 and its codeword lengths at zero.  A
chunk is a series of blocks, each a 3-bit type (1 verbatim, 2 aligned offset, 3 uncompressed) and a
1-bit flag, set for a block of 32768 bytes, clear for a 16-bit size.  Compressed blocks send their
Huffman codes as codeword lengths: an aligned block first 8 three-bit lengths of its aligned-offset
code, then each block the main code (256 literals, then 30 offset slots × 8 length headers) in two
parts and the length code (249 symbols), each part preceded by a 20-symbol pretree of 4-bit lengths
whose symbols are deltas against the lengths of the previous block (mod 17), or runs (17: 4–19 zeros,
18: 20–51 zeros, 19: 4–5 copies of one delta).  An uncompressed block skips to the next 16-bit
boundary (16 bits when already there), holds R0 R1 R2 as 32-bit little-endian words and its bytes,
padded to an even count.  Bits come from 16-bit little-endian words, highest bit first.  At the end
the x86 CALL translation is undone: every E8 byte before the last 10 bytes, skipping the 4 bytes after
each, has its 32-bit target turned back from absolute to relative with the fixed "file size" 12000000.

Sources: Eric Biggers' wimlib (``src/lzx_decompress.c``, ``src/lzx_common.c``,
``src/decompress_common.c``, ``include/wimlib/decompress_common.h``), whose decoder ntfs-3g's
system-compression plugin carries with the window fixed at 32 KiB; the tests check this one against
wimlib's library.  The bit buffer is refilled a 16-bit word at a time when a field needs more bits, as
wimlib's ``bitstream_ensure_bits``; an uncompressed block's alignment drops what is buffered, which is
the format's 1..16 bits: less than a word is buffered then, after the 16-bit block size (a block of
32768 bytes, whose size is the 1-bit flag, is a chunk's first and only block).  What wimlib decodes,
this decodes to the same bytes, and what it refuses, this refuses, with two exceptions, both damage
that wimlib lets through: reading a symbol with a code that has no codewords (wimlib reads symbol 0
from no bits; its comment says a well-formed stream never does, and an encoder cannot: such a code is
only valid when unused), and a chunk whose symbols need bits past its end (wimlib reads zeros there;
the bit buffer here may look ahead into them, as wimlib's does, but no symbol may take bits from
them).  A last odd byte is not bits, as in wimlib, though an uncompressed block may take it as data.

Bounds: ``size`` is 1..32768 and the output exactly ``size`` bytes; a block is 1..what is left, a match
neither starts before the output nor runs past its block; every code is complete or empty.  Symbols
are looked up in tables: codewords of up to 11 bits in one lookup, longer ones (to 16) in a second, so
a table has at most 2**11 + 496 * 2**5 entries.  Memory is the input, its words, the output and four
tables.  Every loop step takes input or gives output.  Malformed data raises ``CorruptImageError``,
nothing else.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import NoReturn

from ..errors import CorruptImageError
from .wof_huffman import EMPTY, SUB, Code, canonical

CHUNK = 32768

_NUM_CHARS = 256
_NUM_SLOTS = 30  # offset slots for a 32 KiB window (wimlib's lzx_get_num_main_syms(15))
_MAIN_SYMS = _NUM_CHARS + 8 * _NUM_SLOTS  # 496: 8 length headers per offset slot
_LEN_SYMS = 249  # lengths 9..257 past the 7 primary ones
_PRE_SYMS = 20
_OVERRUN = 50  # how far a run of the pretree may write past the lengths it decodes (wimlib's allowance)
_MIN_ALIGNED_SLOT = 8  # first slot whose low 3 offset bits an aligned block codes with its aligned code
_E8_FILE_SIZE = 12_000_000

# Extra offset bits per slot, and the offset of each slot's first value (slots 0-2 are R0, R1, R2).
_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13)
_EXTRA_ALIGNED = tuple(n - 3 if slot >= _MIN_ALIGNED_SLOT else n for slot, n in enumerate(_EXTRA))
_BASE = tuple(sum(1 << n for n in _EXTRA[:slot]) - 2 for slot in range(_NUM_SLOTS))  # -2, -1, 0, 1, 2, 4, ...
_R = struct.Struct("<3I")

def _fail(what: str, why: str) -> NoReturn:
    raise CorruptImageError(f"{what}: {why}")


class _Bits:
    """wimlib's input_bitstream: ``have`` bits of ``buf`` not yet taken (the next is the highest of
    them), refilled one 16-bit word at a time when a field needs more.  ``words`` ends with two zero
    words of padding, which a look-ahead may load; running past them is the chunk ending early."""

    __slots__ = ("buf", "have", "next", "words")

    def __init__(self, words: list[int]) -> None:
        self.words = words
        self.next = 0  # index into ``words``
        self.buf = 0
        self.have = 0

    def ensure(self, n: int) -> None:
        if self.have < n:
            self.buf = (self.buf << 16 | self.words[self.next]) & 0xFFFFFFFF
            self.next += 1
            self.have += 16

    def bits(self, n: int) -> int:
        self.ensure(n)
        self.have -= n
        return (self.buf >> self.have) & ((1 << n) - 1)

    def symbol(self, code: Code, ensure: int) -> int:
        self.ensure(ensure)
        table, root, bits = code
        entry = table[(self.buf >> (self.have - root)) & ((1 << root) - 1)]
        if entry >= SUB:
            entry = table[((entry - SUB) >> 5) + ((self.buf >> (self.have - bits)) & ((1 << (bits - root)) - 1))]
        self.have -= entry & 31
        return entry >> 5


def _read_lens(bs: _Bits, lens: list[int], start: int, count: int, what: str) -> None:
    """wimlib's lzx_read_codeword_lens: a pretree, then ``count`` lengths from ``start`` as deltas
    against the old ones; a run may write up to ``_OVERRUN`` entries past the end, as wimlib's does."""
    pre = [bs.bits(4) for _ in range(_PRE_SYMS)]
    code = canonical(pre, 0, _PRE_SYMS, 15, "LZX pretree", what)
    if code[2] == 0:
        _fail(what, "an LZX pretree has no codes")
    at, end = start, start + count
    while at < end:
        sym = bs.symbol(code, 15)
        if sym < 17:
            lens[at] = (lens[at] - sym) % 17
            at += 1
            continue
        if sym == 17:
            run, value = 4 + bs.bits(4), 0
        elif sym == 18:
            run, value = 20 + bs.bits(5), 0
        else:
            run = 4 + bs.bits(1)
            sym = bs.symbol(code, 15)
            if sym > 17:
                _fail(what, f"an LZX pretree run repeats symbol {sym}")
            value = (lens[at] - sym) % 17
        lens[at : at + run] = [value] * run
        at += run


def _undo_e8(out: bytearray) -> None:
    """wimlib's lzx_postprocess: E8 bytes before the last 10, each skipping the 4 after it."""
    size = len(out)
    if size <= 10:
        return
    limit = size - 10
    at = out.find(0xE8, 0, limit)
    while at >= 0:
        target = int.from_bytes(out[at + 1 : at + 5], "little", signed=True)
        if target >= 0:
            if target < _E8_FILE_SIZE:
                out[at + 1 : at + 5] = ((target - at) & 0xFFFFFFFF).to_bytes(4, "little")
        elif target >= -at:
            out[at + 1 : at + 5] = (target + _E8_FILE_SIZE).to_bytes(4, "little")
        at = out.find(0xE8, at + 5, limit)


def decompress(data: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    """One WOF LZX chunk decoded to exactly ``size`` bytes (1 ≤ size ≤ CHUNK)."""
    if not 1 <= size <= CHUNK:
        _fail(what, f"an LZX chunk of {size} bytes is outside 1..{CHUNK}")
    src = bytes(data)
    end = len(src)
    real = end >> 1  # whole words; wimlib's bitstream never reads a last odd byte as bits
    packed = array("H")
    packed.frombytes(src[: real * 2])
    if sys.byteorder == "big":
        packed.byteswap()
    bs = _Bits([*packed.tolist(), 0, 0])
    try:
        out = _decode(bs, src, size, what)
    except (CorruptImageError, IndexError) as e:  # IndexError: only a refill past the padding words
        if isinstance(e, IndexError) or bs.next * 16 - bs.have > real * 16:  # what it read was not there
            raise CorruptImageError(f"{what}: the LZX chunk ends before its data does") from None
        raise
    if bs.next * 16 - bs.have > real * 16:
        _fail(what, "the LZX chunk ends before its data does")
    _undo_e8(out)
    return bytes(out)


def _decode(bs: _Bits, src: bytes, size: int, what: str) -> bytearray:
    """The blocks of a chunk, up to ``size`` bytes of output, before the E8 translation is undone."""
    out = bytearray()
    main_lens = [0] * (_MAIN_SYMS + _OVERRUN)
    len_lens = [0] * (_LEN_SYMS + _OVERRUN)
    r0 = r1 = r2 = 1
    op = 0
    while op < size:
        # The block header: wimlib ensures 4 bits, then takes 3 and 1; a 16-bit size is one read.
        bs.ensure(4)
        kind = bs.bits(3)
        bsize = 32768 if bs.bits(1) else bs.bits(16)
        if kind == 3:
            bs.ensure(1)
            pos = bs.next * 2  # align: drop whatever the bit buffer holds
            if pos + 12 > len(src):
                _fail(what, "an LZX uncompressed block's header is cut short")
            r0, r1, r2 = _R.unpack_from(src, pos)
            if not (r0 and r1 and r2):
                _fail(what, "an LZX uncompressed block sets a recent offset of 0")
            pos += 12
            if not 1 <= bsize <= size - op:
                _fail(what, f"an LZX block of {bsize} bytes at byte {op} of {size}")
            if pos + bsize > len(src):
                _fail(what, "an LZX uncompressed block's data is cut short")
            out += src[pos : pos + bsize]
            op += bsize
            pos += bsize
            if bsize & 1 and pos < len(src):
                pos += 1
            bs.buf = bs.have = 0
            bs.next = pos >> 1  # even, or the end of an odd-sized input: then the first padding word
            continue
        if kind not in (1, 2):
            _fail(what, f"LZX block type {kind} is not verbatim, aligned or uncompressed")
        aligned_lens = [bs.bits(3) for _ in range(8)] if kind == 2 else []
        _read_lens(bs, main_lens, 0, _NUM_CHARS, what)
        _read_lens(bs, main_lens, _NUM_CHARS, _MAIN_SYMS - _NUM_CHARS, what)
        _read_lens(bs, len_lens, 0, _LEN_SYMS, what)
        if not 1 <= bsize <= size - op:
            _fail(what, f"an LZX block of {bsize} bytes at byte {op} of {size}")
        mt, mb, mfull = canonical(main_lens, 0, _MAIN_SYMS, 16, "LZX main", what)
        if mfull == 0:
            _fail(what, "an LZX block's main code has no codes")
        lt, lb, lfull = canonical(len_lens, 0, _LEN_SYMS, 16, "LZX length", what)
        if kind == 2:
            at, ab, _ = canonical(aligned_lens, 0, 8, 7, "LZX aligned offset", what)  # 7 bits: no subtables
            extra, min_aligned = _EXTRA_ALIGNED, _MIN_ALIGNED_SLOT
        else:
            at, ab = [EMPTY], 0
            extra, min_aligned = _EXTRA, _NUM_SLOTS
        mm, lm, am = (1 << mb) - 1, (1 << lb) - 1, (1 << ab) - 1
        msub, lsub = (1 << (mfull - mb)) - 1, (1 << (lfull - lb)) - 1
        base = _BASE
        words, wi, buf, have = bs.words, bs.next, bs.buf, bs.have
        bend = op + bsize
        emit = out.append
        # The hot loop: wimlib's lzx_decompress_block with the bit buffer in locals.  Each refill is
        # bitstream_ensure_bits(n) for the n wimlib asks: 16 for main and length symbols, 7 for aligned.
        try:
            while op < bend:
                if have < 16:
                    buf = (buf << 16 | words[wi]) & 0xFFFFFFFF
                    wi += 1
                    have += 16
                entry = mt[(buf >> (have - mb)) & mm]
                have -= entry & 31
                if entry < 8192:  # a literal: symbol < 256 (constants here, not names: this is the hot path)
                    emit(entry >> 5)
                    op += 1
                    continue
                if entry >= 16777216:  # SUB: a codeword longer than the root's bits
                    entry = mt[((entry - 16777216) >> 5) + ((buf >> (have - mfull)) & msub)]
                    have -= entry & 31
                    if entry < 8192:
                        emit(entry >> 5)
                        op += 1
                        continue
                length = (entry >> 5) & 7  # symbol 256 + 8 * slot + length header
                slot = (entry >> 8) - 32
                if length == 7:
                    if have < 16:
                        buf = (buf << 16 | words[wi]) & 0xFFFFFFFF
                        wi += 1
                        have += 16
                    entry = lt[(buf >> (have - lb)) & lm]
                    if entry >= 16777216:
                        entry = lt[((entry - 16777216) >> 5) + ((buf >> (have - lfull)) & lsub)]
                    elif entry < 0:
                        _fail(what, "an LZX match needs a length from an empty length code")
                    have -= entry & 31
                    length += entry >> 5
                length += 2
                if slot < 3:
                    if slot == 0:
                        offset = r0
                    elif slot == 1:
                        offset, r1, r0 = r1, r0, r1
                    else:
                        offset, r2, r0 = r2, r0, r2
                else:
                    n = extra[slot]
                    if n:
                        if have < n:
                            buf = (buf << 16 | words[wi]) & 0xFFFFFFFF
                            wi += 1
                            have += 16
                        have -= n
                        offset = (buf >> have) & ((1 << n) - 1)
                    else:
                        offset = 0
                    if slot >= min_aligned:
                        if have < 7:
                            buf = (buf << 16 | words[wi]) & 0xFFFFFFFF
                            wi += 1
                            have += 16
                        entry = at[(buf >> (have - ab)) & am]
                        if entry < 0:
                            _fail(what, "an LZX match needs an aligned offset from an empty code")
                        have -= entry & 31
                        offset = offset << 3 | entry >> 5
                    offset += base[slot]
                    r0, r1, r2 = offset, r0, r1
                if offset > op:
                    _fail(what, f"an LZX match reaches {offset} bytes back from byte {op}")
                if length > bend - op:
                    _fail(what, f"an LZX match of {length} bytes runs past its block at byte {op}")
                start = op - offset
                if offset >= length:
                    out += out[start : start + length]
                elif offset == 1:
                    out += out[start:op] * length
                else:
                    out += (out[start:op] * (length // offset + 1))[:length]
                op += length
        finally:  # also on an error: whether it read past the end decides what to call it
            bs.next, bs.buf, bs.have = wi, buf, have
    return out
