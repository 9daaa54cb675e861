"""``fat.entry_runs``: the regex scan of FAT16/FAT32 tables, against a naive per-entry loop."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from imaging_utility.filesystems.fat import entry_runs


def naive(values: list[int], size: int, first: int) -> list[tuple[int, int]]:
    mask = 0x0FFFFFFF if size == 4 else 0xFFFF
    out: list[tuple[int, int]] = []
    for i, v in enumerate(values):
        if v & mask:
            n = first + i
            if out and out[-1][1] == n:
                out[-1] = (out[-1][0], n + 1)
            else:
                out.append((n, n + 1))
    return out


def merged(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in runs:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


# Free entries (with FAT32's reserved top nibble sometimes set), chain links, end-of-chain, bad,
# and values whose zero bytes could fool a scan that lost the entry alignment.
fat32_values = st.lists(st.one_of(
    st.just(0), st.sampled_from([0x10000000, 0xF0000000]), st.integers(1, 0x0FFFFFFF),
    st.sampled_from([0x0FFFFFF8, 0x0FFFFFFF, 0x0FFFFFF7, 0x00000100, 0x01000000, 0x00010000, 5]),
), max_size=300)
fat16_values = st.lists(st.one_of(st.just(0), st.integers(1, 0xFFFF), st.sampled_from([0x0100, 1, 0xFFF8])),
                        max_size=300)


@given(fat32_values, st.integers(0, 1 << 28))
def test_fat32_matches_naive(values: list[int], first: int) -> None:
    data = struct.pack(f"<{len(values)}I", *values)
    assert merged(list(entry_runs(data, 4, first))) == naive(values, 4, first)


@given(fat16_values, st.integers(0, 1 << 16))
def test_fat16_matches_naive(values: list[int], first: int) -> None:
    data = struct.pack(f"<{len(values)}H", *values)
    assert merged(list(entry_runs(memoryview(data), 2, first))) == naive(values, 2, first)


def test_misaligned_zero_bytes_do_not_shift_entries() -> None:
    # Entry 0 = 5 (bytes 05 00 00 00) then a free entry: bytes 1..4 are zero but not an entry.
    data = struct.pack("<4I", 5, 0, 0x100, 0)
    assert list(entry_runs(data, 4, 0)) == [(0, 1), (2, 3)]
    assert list(entry_runs(struct.pack("<3I", 0x10000000, 0x0FFFFFFF, 0), 4, 2)) == [(3, 4)]
