"""``filesystems._bitmap``: bitmap → runs, against a naive bit-by-bit reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging_utility.blocks import BytesSource
from imaging_utility.filesystems import _bitmap
from imaging_utility.filesystems._bitmap import RunList, read_bitmap, set_runs


def naive_runs(data: bytes, base: int = 0, nbits: int | None = None) -> list[tuple[int, int]]:
    total = len(data) * 8 if nbits is None else min(nbits, len(data) * 8)
    out: list[tuple[int, int]] = []
    for i in range(total):
        if data[i >> 3] >> (i & 7) & 1:
            if out and out[-1][1] == base + i:
                out[-1] = (out[-1][0], base + i + 1)
            else:
                out.append((base + i, base + i + 1))
    return out


# Bitmaps shaped like real ones: long 00 / FF stretches with mixed bytes between them.
chunks = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.integers(1, 300).map(lambda n: b"\x00" * n),
    st.integers(1, 300).map(lambda n: b"\xff" * n),
    st.sampled_from([b"\x01", b"\x80", b"\x7f", b"\xfe", b"\x0f\xf0", b"\xaa\x55"]),
)
bitmaps = st.lists(chunks, max_size=12).map(b"".join)


@given(bitmaps, st.integers(0, 1 << 40))
def test_set_runs_matches_naive(data: bytes, base: int) -> None:
    assert list(set_runs(data, base)) == naive_runs(data, base)


@given(bitmaps, st.integers(0, 5000))
def test_padding_bits_past_nbits_are_ignored(data: bytes, nbits: int) -> None:
    assert list(set_runs(data, 0, nbits)) == naive_runs(data, 0, nbits)


def test_known_vectors() -> None:
    # LSB-first: 0x0F is units 0-3; 0xF0 is units 12-15 and runs on into the FF bytes.
    assert list(set_runs(b"\x0f\xf0" + b"\xff" * 9 + b"\x01\x00")) == [(0, 4), (12, 89)]
    assert list(set_runs(b"\x80\x01")) == [(7, 9)]
    assert list(set_runs(b"\xff", nbits=3)) == [(0, 3)]
    assert list(set_runs(b"\x00" * 100)) == []
    assert list(set_runs(b"")) == []
    assert list(set_runs(memoryview(b"\xff" * 1000), 5)) == [(5, 8005)]


@given(bitmaps, st.integers(1, 64), st.integers(1, 7), st.integers(0, 8))
def test_read_bitmap_pieces_and_fragments(
    data: bytes, piece: int, frag: int, pad: int
) -> None:
    """A fragmented bitmap (``frag``-byte fragments scattered on the source) read in tiny pieces."""
    nbits = max(0, len(data) * 8 - pad)
    frags = [data[i : i + frag] for i in range(0, len(data), frag)]
    disk = bytearray(b"\xa5" * 16)
    storage = []
    for f in reversed(frags):  # store fragments in reverse order, with junk between them
        storage.append((len(disk), len(f)))
        disk += f + b"\x5a" * 3
    storage.reverse()
    out = RunList()
    old = _bitmap.PIECE
    _bitmap.PIECE = piece
    try:
        read_bitmap(BytesSource(bytes(disk)), storage, nbits, out, base=2)
    finally:
        _bitmap.PIECE = old
    assert list(out) == naive_runs(data, 2, nbits)
    assert out.units == sum(e - s for s, e in naive_runs(data, 2, nbits))


def test_read_bitmap_too_short_storage() -> None:
    with pytest.raises(ValueError, match="holds 2 bytes, 3 needed"):
        read_bitmap(BytesSource(b"\xff" * 8), [(0, 2)], 20, RunList())


def test_runlist_coalesces_and_checks_order() -> None:
    runs = RunList()
    runs.extend([(0, 4), (4, 6), (8, 9), (8, 12)])
    assert list(runs) == [(0, 6), (8, 12)]
    assert runs.contains(5) and not runs.contains(6) and runs.contains(11) and not runs.contains(12)
    assert list(runs.byte_ranges(4096, 100)) == [(100, 6 * 4096), (100 + 8 * 4096, 4 * 4096)]
    with pytest.raises(ValueError, match="out of order"):
        runs.add(1, 2)


def test_large_bitmap_is_fast_and_compact() -> None:
    """32 MiB of mostly-uniform bitmap (a 1 TiB volume of 4 KiB clusters) decodes quickly."""
    import time

    block = b"\xff" * 300_000 + b"\x00" * 700_000 + b"\x0f\x00\x37" + b"\x00" * 48_573
    data = block * 32
    t = time.perf_counter()
    out = RunList()
    read_bitmap(BytesSource(data), [(0, len(data))], len(data) * 8, out)
    elapsed = time.perf_counter() - t
    assert len(out) == 32 * 4
    assert elapsed < 2.0, f"{elapsed:.2f}s for a 32 MiB bitmap"
