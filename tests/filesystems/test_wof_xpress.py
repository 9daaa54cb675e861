"""Our XPRESS Huffman decoder (``wof_xpress``) against wimlib's compressor and decompressor."""

from __future__ import annotations

import random

import pytest

import wimlib
from imaging_utility.errors import CorruptImageError
from imaging_utility.filesystems import wof_xpress

README = (__import__("pathlib").Path(__file__).resolve().parents[2] / "README.md").read_bytes()


def _samples() -> list[bytes]:
    rnd = random.Random(11)
    code = bytes(rnd.choice(b"\xe8\x48\x89\xe5\x55\xc3\x90\x00\xff") for _ in range(16384))
    return [
        README[:4096], README[1000 : 1000 + 16384], bytes(16384), b"ab" * 4096, code,
        bytes(rnd.randrange(4) for _ in range(8192)), README[:3], README[:100], README[:4095],
        b"x" * 1000 + README[:3000], (b"0123456789" * 2000)[:16384],
    ]


@pytest.mark.parametrize("level", [1, 20, 50, 100])
def test_decodes_what_wimlib_encodes(level: int) -> None:
    decoded = 0
    for data in _samples():
        chunk = max(4096, 1 << (len(data) - 1).bit_length())
        packed = wimlib.compress(wimlib.XPRESS, chunk, data, level)
        if packed is None:  # did not shrink: WOF stores such a chunk as is
            continue
        assert wof_xpress.decompress(packed, len(data), "t") == data
        decoded += 1
    assert decoded >= 9


def test_matches_wimlib_or_fails_cleanly_on_damaged_chunks() -> None:
    """Bit flips, cuts, appended and inserted bytes: where wimlib decodes a damaged chunk, we give the same
    bytes or refuse it as cut short (wimlib reads zeros past the end of its input; we take no data from them);
    where wimlib refuses it, so do we.  Never another exception."""
    rnd = random.Random(3)
    data = README[2000 : 2000 + 8192]
    packed = wimlib.compress(wimlib.XPRESS, 8192, data)
    assert packed is not None
    seen = {"agree": 0, "refused": 0, "cut short": 0}
    for i in range(400):
        bad = wimlib.damage(packed, rnd, i % 4)
        theirs = wimlib.decompress(wimlib.XPRESS, 8192, bad, len(data))
        try:
            ours = wof_xpress.decompress(bad, len(data), "t")
        except CorruptImageError as e:
            if theirs is None:
                seen["refused"] += 1
            else:  # wimlib decoded it from zeros past the end, which we refuse to take data from
                # (padding it with zeros does not reproduce wimlib's output: a byte left over after the
                # last whole word is no bits to wimlib, but a length byte read later)
                assert "the chunk ends" in str(e), (i, e)
                seen["cut short"] += 1
            continue
        assert theirs == ours, i
        seen["agree"] += 1
    assert all(seen.values()), seen

@pytest.mark.parametrize(("data", "size", "why"), [
    (b"", 10, "cannot hold the Huffman table"),
    (bytes(255), 10, "cannot hold the Huffman table"),
    (bytes(256) + b"\0\0", 10, "incomplete"),  # no symbol has a code
    (b"\x11" * 256, 10, "over-subscribed"),
    (bytes(300), 0, "outside XPRESS"),
    (bytes(300), (1 << 16) + 1, "outside XPRESS"),
], ids=["empty", "short table", "no code", "over-subscribed", "size 0", "size over 64 KiB"])
def test_refuses_malformed_chunks(data: bytes, size: int, why: str) -> None:
    with pytest.raises(CorruptImageError, match=why):
        wof_xpress.decompress(data, size, "t")


def test_a_match_before_the_start_is_refused() -> None:
    # two symbols of length 1: literal 0 (code 0) and a match symbol 256+16*4 (code 1): offset ≥ 16, length 3
    lens = bytearray(256)
    lens[0] = 0x01
    lens[(256 + 64) // 2] = 0x01
    bits = 0b1 << 15  # the match first, with no output before it
    with pytest.raises(CorruptImageError, match="reaches 16 bytes back from byte 0"):
        wof_xpress.decompress(bytes(lens) + bits.to_bytes(2, "little") + bytes(4), 10, "t")
