"""Our LZX decoder (``wof_lzx``) against wimlib's compressor and decompressor (``libwim.so.15``, through
``tests/wimlib.py``), and against chunks written here bit by bit where wimlib's compressor cannot make
them: chunks under 100 bytes, uncompressed blocks, runs of the pretree that spill over, empty codes."""

from __future__ import annotations

import heapq
import random
from pathlib import Path

import pytest

import wimlib
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems import wof_lzx

README = (Path(__file__).resolve().parents[2] / "README.md").read_bytes()
Token = int | tuple[str, int, int]  # a literal, ("m", length, offset) or ("r", length, recent offset 0..2)

EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13)
SLOT_BASE = [sum(1 << n for n in EXTRA[:slot]) for slot in range(30)]  # of offset + 2
MAIN = [8] * 16 + [9] * 480  # complete codes: 16/256 + 480/512 == 1
MAIN2 = [9] * 240 + [8] * 16 + [9] * 240  # the same lengths, other symbols short
LEN = [7] * 7 + [8] * 242
ALIGNED = [3] * 8
PRETREE = [4] * 12 + [5] * 8


def _canonical(lens: list[int]) -> dict[int, tuple[int, int]]:
    """symbol → (codeword, length) of the canonical code."""
    codes, code = {}, 0
    for n in range(1, 17):
        for sym, length in enumerate(lens):
            if length == n:
                codes[sym] = (code, n)
                code += 1
        code <<= 1
    return codes


def _huffman(freqs: list[int], limit: int) -> list[int]:
    """Codeword lengths of a Huffman code for ``freqs`` (0: no codeword), at most ``limit`` bits (the
    frequencies are flattened until they fit); a single symbol gets a partner, none gives an empty code."""
    freqs = list(freqs)
    if sum(1 for f in freqs if f) == 1:
        freqs[freqs.index(0)] = 1
    while True:
        lens = [0] * len(freqs)
        heap = [(f, sym, [sym]) for sym, f in enumerate(freqs) if f]
        heapq.heapify(heap)
        while len(heap) > 1:
            f1, t1, s1 = heapq.heappop(heap)
            f2, t2, s2 = heapq.heappop(heap)
            for sym in s1 + s2:
                lens[sym] += 1
            heapq.heappush(heap, (f1 + f2, min(t1, t2), s1 + s2))
        if max(lens) <= limit:
            return lens
        freqs = [f // 2 + 1 if f else 0 for f in freqs]


class _Chunk:
    """Writes an LZX chunk: 16-bit little-endian words, each filled from its highest bit, and the codeword
    lengths each block's codes are sent against (all 0 at the start)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = self.n = 0
        self.main = [0] * 496
        self.len = [0] * 249

    def put(self, value: int, n: int) -> None:
        for i in reversed(range(n)):
            self.acc = self.acc << 1 | (value >> i) & 1
            self.n += 1
            if self.n == 16:
                self.out += self.acc.to_bytes(2, "little")
                self.acc = self.n = 0

    def header(self, kind: int, size: int) -> None:
        self.put(kind, 3)
        if size == 32768:
            self.put(1, 1)
        else:
            self.put(0, 1)
            self.put(size, 16)

    def lens(self, new: list[int], old: list[int], rle: bool = True, spill: bool = False,
             pretree: list[int] | None = PRETREE) -> None:
        """A pretree (``None``: a Huffman code of the symbols sent), then ``new`` as deltas against ``old``;
        zeros as runs (17, 18) and runs of one length (19) when ``rle``.  ``spill``: the last length (0)
        is sent as a run of 51 zeros, which wimlib writes past the end of the lengths being read."""
        sent: list[tuple[int, int, int]] = []  # presym, extra bits, their count
        i, end = 0, len(new) - (1 if spill else 0)
        while i < end:
            zeros = 0
            while rle and i + zeros < end and new[i + zeros] == 0 and zeros < 51:
                zeros += 1
            same = 1
            while rle and i + same < end and new[i + same] == new[i] and same < 5:
                same += 1
            delta = (old[i] - new[i]) % 17
            if zeros >= 20:
                sent.append((18, zeros - 20, 5))
                i += zeros
            elif zeros >= 4:
                sent.append((17, zeros - 4, 4))
                i += zeros
            elif same >= 4:
                sent += [(19, same - 4, 1), (delta, 0, 0)]
                i += same
            else:
                sent.append((delta, 0, 0))
                i += 1
        if spill:
            sent.append((18, 31, 5))
        if pretree is None:
            pretree = _huffman([sum(1 for p, _, _ in sent if p == sym) for sym in range(20)], 15)
        pre = _canonical(pretree)
        for n in pretree:
            self.put(n, 4)
        for sym, extra, count in sent:
            self.put(*pre[sym])
            self.put(extra, count)

    def compressed(self, kind: int, tokens: list[Token], main: list[int] | None = MAIN,
                   length: list[int] | None = LEN, aligned: list[int] | None = ALIGNED, size: int | None = None,
                   rle: bool = True, spill: bool = False, pretree: list[int] | None = PRETREE) -> None:
        """A verbatim (1) or aligned offset (2) block; a code given as ``None`` is a Huffman code of the
        symbols the block sends.  Where a code is empty, its symbol is not written (wimlib reads symbol 0
        from no bits)."""
        if size is None:
            size = sum(1 if isinstance(t, int) else t[1] for t in tokens)
        coded: list[tuple[int, int, int, int, int]] = []  # main symbol, length symbol, slot, extra bits, count
        for t in tokens:
            if isinstance(t, int):
                coded.append((t, -1, 0, 0, 0))
                continue
            what, n, arg = t
            if what == "r":
                slot, extra = arg, 0
            else:
                slot = max(s for s in range(30) if SLOT_BASE[s] <= arg + 2)
                extra = arg + 2 - SLOT_BASE[slot]
            header = min(n - 2, 7)
            coded.append((256 + 8 * slot + header, n - 9 if header == 7 else -1, slot, extra, EXTRA[slot]))
        if main is None:
            main = _huffman([sum(1 for c in coded if c[0] == sym) for sym in range(496)], 16)
        if length is None:
            length = _huffman([sum(1 for c in coded if c[1] == sym) for sym in range(249)], 16)
        if aligned is None:
            aligned = _huffman([sum(1 for c in coded if c[2] >= 8 and c[3] & 7 == sym) for sym in range(8)], 7)
        self.header(kind, size)
        if kind == 2:
            for n in aligned:
                self.put(n, 3)
        self.lens(main[:256], self.main[:256], rle, spill, pretree)
        old = self.main[256:]
        if spill:
            old[:50] = [0] * 50
        self.lens(main[256:], old, rle, pretree=pretree)
        self.lens(length, self.len, rle, pretree=pretree)
        self.main, self.len = list(main), list(length)
        mc, lc, ac = _canonical(main), _canonical(length), _canonical(aligned)
        for sym, len_sym, slot, extra, count in coded:
            self.put(*mc[sym])
            if len_sym >= 0 and lc:
                self.put(*lc[len_sym])
            if kind == 2 and slot >= 8:
                self.put(extra >> 3, count - 3)
                if ac:
                    self.put(*ac[extra & 7])
            else:
                self.put(extra, count)

    def uncompressed(self, data: bytes, recent: tuple[int, int, int] = (1, 1, 1), size: int | None = None,
                     pad: bool = True) -> None:
        self.header(3, len(data) if size is None else size)
        self.put(0, 16 - self.n)  # to the next 16-bit boundary, 16 bits when already there
        self.out += b"".join(r.to_bytes(4, "little") for r in recent) + data
        if len(data) & 1 and pad:
            self.out += b"\0"

    def bytes(self) -> bytes:
        if self.n:
            self.put(0, 16 - self.n)
        return bytes(self.out)


def _ours(data: bytes, size: int) -> bytes | str:
    try:
        return wof_lzx.decompress(data, size, "t")
    except CorruptImageError as e:
        return str(e)


def _agree(data: bytes, size: int) -> bytes:
    """What both decoders make of ``data``: the same bytes."""
    theirs = wimlib.decompress(wimlib.LZX, 32768, data, size)
    assert theirs is not None, "wimlib refuses it"
    assert _ours(data, size) == theirs
    return theirs


def _first_block_type(packed: bytes) -> int:
    return int.from_bytes(packed[:2], "little") >> 13


def _x86(size: int, seed: int) -> bytes:
    """Machine-code-like bytes: common opcodes, and E8 calls (rel32) to a few functions, which wimlib's
    E8 translation turns into the same bytes wherever they are called from."""
    rnd = random.Random(seed)
    targets = [rnd.randrange(size) for _ in range(40)]
    ops = [b"\x55\x48\x89\xe5", b"\x48\x83\xec\x20", b"\xc3", b"\x90", b"\x8b\x45\xfc", b"\x0f\x84", b"\xff\x15"]
    out = bytearray()
    while len(out) < size:
        r = rnd.random()
        if r < 0.2:
            out += b"\xe8" + (rnd.choice(targets) - len(out) - 5).to_bytes(4, "little", signed=True)
        elif r < 0.7:
            out += rnd.choice(ops)
        else:
            out += rnd.randbytes(rnd.randrange(1, 4))
    return bytes(out[:size])


def _records(size: int, seed: int) -> bytes:
    """Random 16-byte records from a small set: matches at offsets that are multiples of 16, which makes
    wimlib choose aligned offset blocks."""
    rnd = random.Random(seed)
    records = [rnd.randbytes(16) for _ in range(200)]
    return b"".join(rnd.choice(records) for _ in range(size // 16 + 1))[:size]


def _samples() -> list[bytes]:
    rnd = random.Random(11)
    text = (README * (32768 // len(README) + 1))[:32768]
    return [
        text, text[:4095], text[1000:1200], _x86(32768, 1), _x86(5000, 2), bytes(32768), bytes(100),
        _records(32768, 3), text[:16384] + _records(16384, 4), b"ab" * 16384, (b"x" * 3000 + b"yz" * 500) * 8,
        bytes(rnd.randrange(4) for _ in range(32767)), text[:32767], b"a" * 100,
    ]


@pytest.mark.parametrize("level", [1, 20, 50, 100])
def test_decodes_what_wimlib_encodes(level: int) -> None:
    for data in _samples():  # every one shrinks: WOF would store one that does not as is
        packed = wimlib.compress(wimlib.LZX, 32768, data, level)
        assert packed is not None
        assert wof_lzx.decompress(packed, len(data), "t") == data
        assert wimlib.decompress(wimlib.LZX, 32768, packed, len(data)) == data


@pytest.mark.parametrize("level", [1, 50, 100])
def test_aligned_offset_blocks(level: int) -> None:
    data = _records(32768, 5)
    packed = wimlib.compress(wimlib.LZX, 32768, data, level)
    assert packed is not None
    assert _first_block_type(packed) == 2
    assert wof_lzx.decompress(packed, len(data), "t") == data


def test_e8_translation_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _x86(32768, 6)
    packed = wimlib.compress(wimlib.LZX, 32768, data, 50)
    assert packed is not None
    assert wof_lzx.decompress(packed, len(data), "t") == data
    monkeypatch.setattr(wof_lzx, "_undo_e8", lambda out: None)
    assert wof_lzx.decompress(packed, len(data), "t") != data  # the translation did change the chunk


@pytest.mark.parametrize("size", [11, 12, 13, 15, 16, 17, 20, 64, 4095, 32768])
def test_e8_translation_matches_wimlib_at_every_position(size: int) -> None:
    """Uncompressed blocks of E8 bytes and targets of every kind (0, small, negative, past 12000000, E8
    inside a target): wimlib's exact rules, including that nothing in the last 10 bytes is translated."""
    rnd = random.Random(size)
    data = bytearray()
    while len(data) < size:
        data.append(0xE8)
        data += rnd.choice([0, 5, -1, -3, 12_000_000, 11_999_999, -40000, rnd.randrange(-2**31, 2**31),
                            0xE8E8E8E8 - 2**32]).to_bytes(4, "little", signed=True)[: rnd.randrange(1, 5)]
    chunk = _Chunk()
    chunk.uncompressed(bytes(data[:size]))
    out = _agree(chunk.bytes(), size)
    if size > 20:
        assert out != data[:size]
    assert out[-10:] == data[size - 10 : size]


def test_no_translation_in_chunks_of_10_bytes_or_less() -> None:
    for size in (1, 2, 5, 10):
        data = (b"\xe8\x05\x00\x00\x00" * 2)[:size]
        chunk = _Chunk()
        chunk.compressed(1, list(data))
        assert _agree(chunk.bytes(), size) == data


@pytest.mark.parametrize("size", [1, 2, 10, 11, 12, 100, 4095, 32767, 32768])
def test_sizes(size: int) -> None:
    """Every size, as literals, matches of every kind, and one uncompressed block; none of which wimlib's
    compressor makes for chunks under 100 bytes."""
    rnd = random.Random(size)
    data = bytes(rnd.choice(b"abcd\xe8") for _ in range(size))
    chunk = _Chunk()
    chunk.compressed(1, list(data))
    _agree(chunk.bytes(), size)
    chunk = _Chunk()
    chunk.uncompressed(data)
    assert _first_block_type(chunk.bytes()) == 3
    _agree(chunk.bytes(), size)
    if size >= 4:
        tokens: list[Token] = [data[0], data[1]]
        left = size - 2
        while left:
            n = min(left, rnd.randrange(2, 258))
            if n == 1:
                tokens.append(data[0])
            elif rnd.random() < 0.3:
                tokens.append(("r", n, rnd.randrange(3)))
            else:
                tokens.append(("m", n, rnd.randrange(1, size - left + 1)))
            left -= 1 if n == 1 else n
        for kind in (1, 2):
            chunk = _Chunk()
            chunk.compressed(kind, tokens)
            _agree(chunk.bytes(), size)


def _random_chunk(rnd: random.Random, size: int) -> tuple[bytes, bytes]:
    """A chunk of random blocks (all three kinds, sizes from 1 byte) whose literals and matches follow
    skewed distributions, with Huffman codes of them (long codewords, and empty codes where a block sends
    no length or aligned symbol), runs in the pretree or not; and the bytes it decodes to."""
    chunk, out, recent = _Chunk(), bytearray(), [1, 1, 1]
    while len(out) < size:
        block = min(size - len(out), rnd.choice([1, 2, 9, 300, 5000, 32768]))
        kind = rnd.choice([1, 2, 2, 3])
        if kind == 3:
            data = bytes(min(255, int(rnd.expovariate(0.05))) for _ in range(block))
            recent = [rnd.randrange(1, len(out) + 2) for _ in range(3)]
            chunk.uncompressed(data, recent=(recent[0], recent[1], recent[2]))
            out += data
            continue
        tokens: list[Token] = []
        end = len(out) + block
        skew = rnd.choice([0.03, 0.8])  # 0.8: literal k about 0.45**k of the time: long codewords
        while len(out) < end:
            left = end - len(out)
            if not out or left < 2 or rnd.random() < 0.5:
                literal = min(255, int(rnd.expovariate(skew)))
                tokens.append(literal)
                out.append(literal)
                continue
            n = min(left, 2 + min(255, int(rnd.expovariate(rnd.choice([0.02, 0.3, 1.0])))))
            usable = [slot for slot in range(3) if recent[slot] <= len(out)]
            if usable and rnd.random() < 0.3:
                slot = rnd.choice(usable)
                offset = recent[slot]
                recent[slot], recent[0] = recent[0], offset
                tokens.append(("r", n, slot))
            else:
                offset = min(len(out), 32765, 1 + int(rnd.expovariate(rnd.choice([0.001, 0.05, 1.0]))))
                recent = [offset, recent[0], recent[1]]
                tokens.append(("m", n, offset))
            for _ in range(n):
                out.append(out[-offset])
        chunk.compressed(kind, tokens, main=None, length=None, aligned=None, pretree=None,
                         rle=rnd.random() < 0.7)
    return chunk.bytes(), bytes(out)


@pytest.mark.parametrize("seed", range(16))
def test_random_chunks_of_every_block_kind(seed: int) -> None:
    rnd = random.Random(seed)
    size = rnd.choice([rnd.randrange(1, 64), rnd.randrange(1, 32769), 32768])
    packed, data = _random_chunk(rnd, size)
    theirs = _agree(packed, size)
    if b"\xe8" not in data[: max(0, size - 10)]:  # else the E8 translation is undone on what was not translated
        assert theirs == data


@pytest.mark.parametrize("kind", [1, 2])
def test_codewords_of_the_longest_lengths(kind: int) -> None:
    """Codes whose longest codewords are the format's limits (16 bits main and length, 15 pretree, 7
    aligned), every offset slot and length header, and the decoded bytes checked, not only compared."""
    main = _huffman([2 ** (18 - i) if i < 18 else 1 for i in range(496)], 16)
    length = _huffman([2 ** (18 - i) if i < 18 else 1 for i in range(249)], 16)
    pretree = _huffman([2 ** (19 - i) for i in range(20)], 15)
    aligned = _huffman([2 ** (8 - i) for i in range(8)], 7)
    assert (max(main), max(length), max(pretree), max(aligned)) == (16, 16, 15, 7)
    rnd = random.Random(kind)
    out = bytearray(rnd.sample(range(256), 256))
    tokens: list[Token] = list(out)
    while len(out) < 29000:  # room for offsets of every slot
        n, offset = rnd.choice([(257, 1), (256, 256), (200, 3)])
        tokens.append(("m", n, offset))
        for _ in range(n):
            out.append(out[-offset])
    for slot in range(3, 30):
        for header in range(8):
            n = 2 + header if header < 7 else rnd.choice([9, 10, 11, 100, 257] if slot < 5 else [9, 10])
            offset = min(len(out), SLOT_BASE[slot] - 2 + rnd.randrange(1 << EXTRA[slot]))
            tokens.append(("m", n, offset))
            for _ in range(n):
                out.append(out[-offset])
    tokens += list(b"end")
    out += b"end"
    chunk = _Chunk()
    chunk.compressed(kind, tokens, main=main, length=length, aligned=aligned, pretree=pretree)
    assert _agree(chunk.bytes(), len(out)) == out


def test_long_runs_and_overlapping_matches() -> None:
    chunk = _Chunk()
    chunk.compressed(1, [ord("a"), ("m", 257, 1), ord("b"), ("m", 257, 2), ("m", 200, 3), ("r", 100, 0),
                         ("m", 9, 7), ("m", 2, 1), ("m", 31, 516), ("r", 257, 1), ("r", 17, 2)])
    out = _agree(chunk.bytes(), 1132)
    assert out[:258] == b"a" * 258
    assert out[258:516] == b"b" + b"ab" * 128 + b"a"


def test_blocks_of_every_kind_in_one_chunk() -> None:
    """Verbatim, uncompressed (its recent offsets then used), aligned, and verbatim again with new codes
    sent as deltas against the old ones, with and without runs; block sizes of 16 bits."""
    chunk = _Chunk()
    chunk.compressed(1, [*b"abcdefgh", ("m", 30, 8)])
    chunk.uncompressed(b"odd-sized block", recent=(3, 5, 40))
    chunk.compressed(2, [("r", 4, 0), ("r", 5, 1), ("r", 3, 2), ("m", 40, 37), 0xE8, *b"\x10\0\0\0xyz"],
                     main=MAIN2, rle=False)
    chunk.compressed(1, [("m", 8, 60), *b"end"], main=MAIN, length=[0] * 249)
    out = _agree(chunk.bytes(), 38 + 15 + 60 + 11)
    assert out[:53] == b"abcdefgh" * 4 + b"abcdef" + b"odd-sized block"
    assert out[53:62] == b"ocko" + b"kocko"  # R0 = 3, then R1 = 5 (swapped to the front)


def test_an_uncompressed_block_of_32768_bytes() -> None:
    data = _x86(32768, 7)
    chunk = _Chunk()
    chunk.uncompressed(data)
    packed = chunk.bytes()
    assert packed[1] & 0x10 and _first_block_type(packed) == 3  # the 1-bit flag: the default size
    assert _agree(packed, 32768) != data  # E8 translation is undone in uncompressed blocks too


def test_uncompressed_block_after_a_deep_look_ahead() -> None:
    """wimlib's bit buffer may hold up to 31 bits; before an uncompressed block's header its 16-bit size
    always leaves less than a word, so the skip to the next boundary is the format's 1..16 bits."""
    one_bit = [0] * 496
    one_bit[ord("A")] = 1
    for i, sym in enumerate(s for s in range(496) if s != ord("A")):
        one_bit[sym] = 9 if i < 17 else 10  # 1/2 + 17/512 + 478/1024 == 1
    for n in range(1, 40):
        chunk = _Chunk()
        chunk.compressed(1, [ord("A")] * n, main=one_bit)
        chunk.uncompressed(b"XYZ" * 7)
        assert _agree(chunk.bytes(), n + 21) == b"A" * n + b"XYZ" * 7


def test_a_run_of_the_pretree_that_spills_into_the_next_lengths() -> None:
    """A run of zeros ending the 256 literal lengths writes on into the match lengths, against which the
    second part's deltas are then read, as wimlib does."""
    spilled = [8] * 17 + [9] * 238 + [0] + [9] * 240  # literal 255 has no code; 17/256 + 478/512 == 1
    chunk = _Chunk()
    chunk.compressed(1, [*b"abc"])
    chunk.compressed(1, [*b"xyz", ("m", 9, 3)], main=spilled, spill=True)
    assert _agree(chunk.bytes(), 15) == b"abcxyzxyzxyzxyz"


def test_empty_codes_that_are_not_used_are_accepted() -> None:
    chunk = _Chunk()
    chunk.compressed(1, [*b"abcd", ("m", 8, 4)], length=[0] * 249)  # no match long enough for a length symbol
    assert _agree(chunk.bytes(), 12) == b"abcdabcdabcd"
    chunk = _Chunk()
    chunk.compressed(2, [*b"abcd", ("m", 8, 4)], aligned=[0] * 8)  # no offset with aligned bits
    assert _agree(chunk.bytes(), 12) == b"abcdabcdabcd"


@pytest.mark.parametrize("case", ["length", "aligned", "main", "pretree"])
def test_an_empty_code_that_is_used_is_refused(case: str) -> None:
    """wimlib decodes symbol 0 from no bits with an empty code; no encoder sends a symbol with a code that
    has none, so we refuse it (wimlib's own comment: a well-formed stream never needs that table)."""
    chunk = _Chunk()
    if case == "length":
        chunk.compressed(1, [*b"abcd", ("m", 9, 4)], length=[0] * 249)
        size, why = 13, "empty length code"
    elif case == "aligned":
        chunk.compressed(2, [*b"abcdefghijklmnopq", ("m", 4, 16)], aligned=[0] * 8)
        size, why = 21, "aligned offset from an empty code"
    elif case == "main":
        chunk.compressed(1, [], main=[0] * 496, size=5)
        size, why = 5, "main code has no codes"
    else:
        chunk.header(1, 4)
        chunk.put(0, 80)  # a pretree of 20 zero lengths
        size, why = 4, "pretree has no codes"
    packed = chunk.bytes() + bytes(64)
    assert wimlib.decompress(wimlib.LZX, 32768, packed, size) is not None
    with pytest.raises(CorruptImageError, match=why):
        wof_lzx.decompress(packed, size, "t")


def _malformed() -> list[tuple[bytes, int, str]]:
    cases = []
    for kind in (0, 4, 5, 6, 7):
        chunk = _Chunk()
        chunk.header(kind, 10)
        cases.append((chunk.bytes() + bytes(40), 10, f"block type {kind} is not"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"ab"], size=0)
    cases.append((chunk.bytes(), 2, "block of 0 bytes"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"abc"])
    cases.append((chunk.bytes(), 2, "block of 3 bytes at byte 0 of 2"))
    chunk = _Chunk()
    chunk.uncompressed(b"abc", size=5)
    cases.append((chunk.bytes(), 4, "block of 5 bytes"))
    chunk = _Chunk()
    chunk.uncompressed(b"abcd", recent=(1, 0, 1))
    cases.append((chunk.bytes(), 4, "recent offset of 0"))
    chunk = _Chunk()
    chunk.uncompressed(b"abcd")
    cases.append((chunk.bytes()[:-1], 4, "data is cut short"))
    cases.append((chunk.bytes()[:10], 4, "header is cut short"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"ab", ("m", 3, 3)])
    cases.append((chunk.bytes(), 5, "reaches 3 bytes back from byte 2"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"ab", ("r", 3, 1)])  # R1 is 1 at the start of a chunk
    chunk.compressed(1, [*b"ab", ("m", 20, 2)], size=10)
    cases.append((chunk.bytes(), 15, "match of 20 bytes runs past its block"))
    chunk = _Chunk()
    chunk.compressed(1, [0, 0], main=[1] + [0] * 495)  # one codeword: incomplete
    cases.append((chunk.bytes(), 2, "main code is incomplete"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"ab"], length=[1] * 3 + [0] * 246)
    cases.append((chunk.bytes(), 2, "length code is over-subscribed"))
    chunk = _Chunk()
    chunk.compressed(2, [*b"ab"], aligned=[3] * 7 + [0])
    cases.append((chunk.bytes(), 2, "aligned offset code is incomplete"))
    chunk = _Chunk()
    chunk.header(1, 4)
    for n in [15] * 20:
        chunk.put(n, 4)  # 20 codewords of 15 bits: incomplete
    cases.append((chunk.bytes() + bytes(40), 4, "pretree code is incomplete"))
    chunk = _Chunk()
    chunk.header(1, 4)
    for n in PRETREE:
        chunk.put(n, 4)
    pre = _canonical(PRETREE)
    chunk.put(*pre[19])
    chunk.put(0, 1)
    chunk.put(*pre[18])  # a run of one length whose length is a run
    cases.append((chunk.bytes() + bytes(40), 4, "pretree run repeats symbol 18"))
    chunk = _Chunk()
    chunk.compressed(1, [*b"abcdefgh"])
    cases.append((chunk.bytes()[:-2], 8, "ends before its data does"))
    cases.append((b"", 1, "ends before its data does"))
    cases.append((b"\x00", 1, "ends before its data does"))
    for size in (0, -1, 32769):
        cases.append((chunk.bytes(), size, f"chunk of {size} bytes is outside 1..32768"))
    return cases


@pytest.mark.parametrize(("data", "size", "why"), _malformed())
def test_refuses_malformed_chunks(data: bytes, size: int, why: str) -> None:
    with pytest.raises(CorruptImageError, match=why):
        wof_lzx.decompress(data, size, "t")
    if 1 <= size <= 32768 and "ends before" not in why:
        assert wimlib.decompress(wimlib.LZX, 32768, data, size) is None


def test_matches_wimlib_or_fails_cleanly_on_damaged_chunks() -> None:
    """Bit flips, cuts, appended and inserted bytes: where wimlib decodes a damaged chunk, we give the same
    bytes, or refuse it as cut short (wimlib reads zeros past the end of its input; then the same bytes
    with zeros appended give wimlib's output, or read a symbol with an empty code from them) or as
    reading a symbol with an empty code; where wimlib
    refuses it, so do we.  Never another exception."""
    rnd = random.Random(3)
    hand = _Chunk()
    hand.compressed(1, [*b"abcdefgh", ("m", 30, 8)])
    hand.uncompressed(b"uncompressed!", recent=(3, 5, 7))
    hand.compressed(2, [("r", 4, 1), ("m", 12, 40), 0xE8, *b"\x10\0\0\0xyzxyzxyzxyz"], main=MAIN2)
    samples = [(hand.bytes(), 38 + 13 + 4 + 12 + 17)]
    for data, level in [(README[:3000], 50), (_x86(4096, 8), 20), (_records(4096, 9), 100),
                        (README[5000:9000], 1), (_x86(32768, 10), 50)]:
        packed = wimlib.compress(wimlib.LZX, 32768, data, level)
        assert packed is not None
        samples.append((packed, len(data)))
    seen = {"agree": 0, "refused": 0, "cut short": 0}
    for i in range(400):
        packed, size = samples[i % len(samples)]
        bad = wimlib.damage(packed, rnd, i % 4)
        theirs = wimlib.decompress(wimlib.LZX, 32768, bad, size)
        ours = _ours(bad, size)
        if isinstance(ours, bytes):
            assert ours == theirs, i
            seen["agree"] += 1
        elif theirs is None:
            seen["refused"] += 1
        elif "ends before its data does" in ours:
            seen["cut short"] += 1
            if len(bad) % 2 == 0:  # (an odd last byte is no bits to wimlib, nor to us)
                padded = _ours(bad + bytes(65536), size)
                assert padded == theirs or "no codes" in padded or "empty" in padded, i
        else:
            assert "empty" in ours or "no codes" in ours, (i, ours)
    assert all(seen.values()), seen


def test_incompressible_chunks_are_not_ours() -> None:
    """wimlib does not compress random data (it returns 0): WOF then stores the chunk as is, and the
    reader (``wof.py``) takes a chunk whose stored size is the chunk size as is, never calling us."""
    data = random.Random(12).randbytes(32768)
    assert wimlib.compress(wimlib.LZX, 32768, data, 50) is None


def test_accepts_any_buffer() -> None:
    data = README[:4095]
    packed = wimlib.compress(wimlib.LZX, 32768, data, 50)
    assert packed is not None
    for buffer in (bytearray(packed), memoryview(packed), memoryview(b"xx" + packed)[2:]):
        assert wof_lzx.decompress(buffer, len(data), "t") == data
