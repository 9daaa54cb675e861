"""``serve.httprange.parse`` against RFC 9110 §14.1.2 and §15.5.17, and against a naive reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging_utility.serve import httprange
from imaging_utility.serve.httprange import Unsatisfiable, multipart_parts, parse


@pytest.mark.parametrize(("header", "size", "want"), [
    (None, 10, None),
    ("bytes=0-0", 10, [(0, 0)]),
    ("bytes=0-", 10, [(0, 9)]),
    ("bytes=5-100", 10, [(5, 9)]),
    ("bytes=-3", 10, [(7, 9)]),
    ("bytes=-30", 10, [(0, 9)]),
    ("bytes= 1 - 2 ,", 10, [(1, 2)]),
    ("bytes=8-9,0-1", 10, [(0, 1), (8, 9)]),
    ("bytes=0-4,3-6,7-7", 10, [(0, 7)]),
    ("bytes=20-30,0-0", 10, [(0, 0)]),
    ("BYTES=0-1", 10, [(0, 1)]),
    ("items=0-1", 10, None),
    ("bytes=" + ",".join(f"{i}-{i}" for i in range(0, 200, 2)), 1000, None),  # over MAX_RANGES: whole file
])
def test_satisfiable(header: str | None, size: int, want: list[tuple[int, int]] | None) -> None:
    assert parse(header, size) == want


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=5-2", 10), ("bytes=-0", 10), ("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=", 10),
    ("bytes=-", 10), ("bytes=a-b", 10), ("bytes=1-2-3", 10), ("bytes=0-0", 0), ("bytes=-5", 0),
    ("bytes=1-2,5-3", 10), ("bytes=,,", 10),
])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse(header, size)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=httprange.MAX_RANGES),
       st.integers(0, 256))
def test_ranges_cover_exactly_the_asked_bytes(pairs: list[tuple[int, int]], size: int) -> None:
    header = "bytes=" + ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
    asked = {i for a, b in pairs for i in range(min(a, b), max(a, b) + 1) if i < size}
    try:
        got = parse(header, size)
    except Unsatisfiable:
        assert not asked
        return
    assert got is not None
    assert {i for a, b in got for i in range(a, b + 1)} == asked
    assert all(got[k][1] + 1 < got[k + 1][0] for k in range(len(got) - 1))  # ascending, disjoint


def test_multipart_length_is_exact() -> None:
    parts, tail, total = multipart_parts([(0, 9), (20, 29)], 100, "text/plain", "b0undary")
    body = b"".join(head + b"x" * (b - a + 1) for head, a, b in parts) + tail
    assert len(body) == total and body.endswith(b"\r\n--b0undary--\r\n")
