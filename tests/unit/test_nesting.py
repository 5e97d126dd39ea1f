"""How deeply a JSON value nests: the measure that keeps params, metadata and results showable."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tarea.domain.nesting import (
    HOLDS_NUL,
    MAX_DEPTH,
    NOT_FINITE,
    NOT_UNICODE,
    clean_text,
    depth,
    shape,
    storable,
    text_fault,
    too_deep,
)


def nested_dicts(levels: int) -> Any:
    """``{"a": {"a": ... 1}}`` with ``levels`` dicts."""
    return json.loads('{"a":' * levels + "1" + "}" * levels)


def nested_lists(levels: int) -> Any:
    """``[[[...]]]`` with ``levels`` lists (json.loads would recurse: built by hand)."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(1, 0, id="number"),
        pytest.param("text", 0, id="string"),
        pytest.param(None, 0, id="null"),
        pytest.param({}, 1, id="empty-dict"),
        pytest.param([], 1, id="empty-list"),
        pytest.param({"a": 1, "b": "x"}, 1, id="flat-dict"),
        pytest.param([1, 2, 3], 1, id="flat-list"),
        pytest.param({"a": [1]}, 2, id="list-in-dict"),
        pytest.param([{"a": 1}], 2, id="dict-in-list"),
        pytest.param({"a": 1, "b": {"c": {"d": []}}}, 4, id="deepest-branch-counts"),
        pytest.param([[1], [[2]], 3], 3, id="siblings-of-different-depths"),
        pytest.param(list(range(10_000)), 1, id="wide-and-flat"),
        pytest.param(nested_dicts(MAX_DEPTH), MAX_DEPTH, id="dicts-at-the-cap"),
        pytest.param(nested_lists(MAX_DEPTH), MAX_DEPTH, id="lists-at-the-cap"),
    ],
)
def test_depth_counts_nested_dicts_and_lists(value: Any, expected: int) -> None:
    """Scalars are 0, each dict or list one level, the deepest branch decides."""
    assert depth(value) == expected
    assert too_deep(value) is False


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(nested_dicts(MAX_DEPTH + 1), id="dicts-one-past-the-cap"),
        pytest.param(nested_lists(MAX_DEPTH + 1), id="lists-one-past-the-cap"),
        pytest.param(nested_dicts(600), id="dicts-600"),
        pytest.param({"ok": 1, "deep": nested_lists(1_500)}, id="lists-1500-in-a-branch"),
        pytest.param(nested_lists(200_000), id="deeper-than-any-recursion"),
    ],
)
def test_too_deep_past_the_cap_and_stops_there(value: Any) -> None:
    """Past the cap the walk stops one level further, whatever the real depth."""
    assert too_deep(value) is True
    assert depth(value) == MAX_DEPTH + 1


@pytest.mark.parametrize(("limit", "expected"), [(0, 1), (1, 2), (2, 3), (3, 3), (10, 3)])
def test_depth_honours_the_limit_it_is_given(limit: int, expected: int) -> None:
    """With another limit, the count stops at limit + 1 (or the real depth, if smaller)."""
    assert depth({"a": [{"b": 1}]}, limit) == expected


@pytest.mark.parametrize(
    ("value", "finite"),
    [
        pytest.param({"a": 1.5, "b": [1, 2.0, {"c": -3e300}]}, True, id="finite"),
        pytest.param({"a": "NaN", "b": None, "c": True}, True, id="no-floats"),
        pytest.param({"a": math.nan}, False, id="nan-at-the-top"),
        pytest.param({"a": [1, {"b": [math.inf]}]}, False, id="inf-deep-in-a-list"),
        pytest.param([1.0, 2.0, -math.inf], False, id="minus-inf-in-a-list"),
        pytest.param(math.nan, False, id="a-bare-nan"),
    ],
)
def test_shape_tells_whether_every_number_is_finite(value: Any, finite: bool) -> None:
    """NaN and the infinities are found at any depth; strings and other scalars are not numbers."""
    assert shape(value)[1] is finite
    assert shape(value)[0] == depth(value)


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        pytest.param({"a": "ñandú ✓", "b": ["𝄞", {"c": 1.5}]}, None, id="unicode"),
        pytest.param({"a": ["x", {"b": "\ud800"}]}, NOT_UNICODE, id="a-lone-surrogate-deep"),
        pytest.param({"\udfff": 1}, NOT_UNICODE, id="a-lone-surrogate-as-a-key"),
        pytest.param({"a": [{"b": "x\x00y"}]}, HOLDS_NUL, id="nul-deep"),
        pytest.param({"k\x00": 1}, HOLDS_NUL, id="nul-in-a-key"),
        pytest.param("\x00", HOLDS_NUL, id="a-bare-nul"),
        pytest.param({"a": "\\u0000"}, None, id="a-backslash-then-u0000-is-not-nul"),
    ],
)
def test_text_fault_finds_what_no_store_holds_in_any_string(value: Any, fault: str | None) -> None:
    """Values and keys, at any depth; the text ``\\u0000`` (escaped) is not U+0000."""
    assert text_fault(value) == fault


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        pytest.param({"a": [1, 2.5, "x"]}, None, id="fine"),
        pytest.param({"a": [math.nan]}, NOT_FINITE, id="nan"),
        pytest.param([{"b": -math.inf}], NOT_FINITE, id="minus-inf"),
        pytest.param({"a": "\x00"}, HOLDS_NUL, id="nul"),
        pytest.param(["\ud800"], NOT_UNICODE, id="lone-surrogate"),
    ],
)
def test_storable_says_why_an_answer_cannot_be_stored(value: Any, fault: str | None) -> None:
    assert storable(value) == fault


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("plain ñ 𝄞", "plain ñ 𝄞"),
        ("a\x00b", "a\ufffdb"),
        ("x\ud800y\udfff", "x\ufffdy\ufffd"),
    ],
)
def test_clean_text_makes_what_no_store_holds_u_fffd(text: str, clean: str) -> None:
    assert clean_text(text) == clean
