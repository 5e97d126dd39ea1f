"""The task routes' JSON encoding."""

from __future__ import annotations

import json
import math

from tarea.api.responses import FastJSONResponse


def test_it_encodes_what_json_dumps_would_as_compact_utf8() -> None:
    content = {"a": [1, 2.5, None, True], "ñ": "día ✓", "nested": {"x": {}}}
    body = bytes(FastJSONResponse(content).body)
    assert json.loads(body) == content
    assert body == json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def test_floats_json_cannot_carry_become_null() -> None:
    body = bytes(FastJSONResponse({"result": [math.nan, math.inf, -math.inf, 1.5]}).body)
    assert json.loads(body) == {"result": [None, None, None, 1.5]}
