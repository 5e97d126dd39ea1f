"""The task routes' JSON encoding."""

from __future__ import annotations

import json
import math

from tarea.api.responses import CUT, DEEPEST, FastJSONResponse


def test_it_encodes_what_json_dumps_would_as_compact_utf8() -> None:
    content = {"a": [1, 2.5, None, True], "ñ": "día ✓", "nested": {"x": {}}}
    body = bytes(FastJSONResponse(content).body)
    assert json.loads(body) == content
    assert body == json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def test_floats_json_cannot_carry_become_null() -> None:
    body = bytes(FastJSONResponse({"result": [math.nan, math.inf, -math.inf, 1.5]}).body)
    assert json.loads(body) == {"result": [None, None, None, 1.5]}


def test_what_pydantic_core_refuses_is_still_answered() -> None:
    """A task's result may hold a lone surrogate (json.loads takes one): no 500 for it."""
    content = {"result": {"s": "\ud800", "nan": math.nan}}
    body = bytes(FastJSONResponse(content).body)
    assert json.loads(body) == {"result": {"s": "\ud800", "nan": None}}


def test_nesting_deeper_than_pydantic_core_goes_is_still_answered() -> None:
    deep: list[object] = []
    inner = deep
    for _ in range(400):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    assert json.loads(bytes(FastJSONResponse({"result": deep}).body)) == {"result": deep}


def test_nesting_deeper_than_json_dumps_goes_is_answered_cut() -> None:
    """A record kept from before the nesting cap is shown cut at DEEPEST levels, never a 500."""
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(5_000):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    shown = json.loads(bytes(FastJSONResponse({"result": deep, "n": math.nan}).body))
    assert shown["n"] is None
    value = shown["result"]  # the document's level 2
    for _ in range(DEEPEST - 2):
        value = value["a"]
    assert value == {"a": CUT}  # level DEEPEST is the last shown
