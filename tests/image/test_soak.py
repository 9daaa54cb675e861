"""Opt-in soak runs (``scripts/test -m slow``): the format properties with thousands of examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_corruption import pristine  # noqa: F401  (fixture)
from test_corruption import test_any_flipped_byte_is_detected as _flip
from test_resume import reference  # noqa: F401  (fixture)
from test_resume import test_truncation_anywhere_resumes_identically as _truncate

pytestmark = pytest.mark.slow


@settings(max_examples=3000)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True), bit=st.integers(min_value=0, max_value=7))
def test_soak_flipped_bytes(tmp_path_factory: pytest.TempPathFactory, pristine: object, where: float,  # noqa: F811
                            bit: int) -> None:
    _flip.hypothesis.inner_test(tmp_path_factory, pristine, where, bit)  # type: ignore[attr-defined]


@settings(max_examples=1000)
@given(where=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_soak_truncation(tmp_path_factory: pytest.TempPathFactory, reference: object,  # noqa: F811
                         where: float) -> None:
    _truncate.hypothesis.inner_test(tmp_path_factory, reference, where)  # type: ignore[attr-defined]
