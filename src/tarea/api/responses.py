"""JSON responses encoded by pydantic-core's serializer instead of ``json.dumps``.

The task routes answer with a whole task record; encoding it is a visible
part of a warm task's cost (about 5x less CPU this way, measured). Floats that
JSON cannot carry (NaN, infinities: a task may return them) become ``null``
instead of failing the response. What pydantic-core cannot encode but a task
may still have answered (a lone surrogate, nesting deeper than it goes) is
encoded by ``json.dumps`` (``\\u`` escapes), with the same ``null`` rule.
Nesting deeper than even that takes (~1,000 levels, only in records kept
from before tarea capped it: :mod:`tarea.domain.nesting`) is shown cut at
:data:`DEEPEST` levels, never answered 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic_core
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """A :class:`JSONResponse` rendered by ``pydantic_core.to_json`` (compact, UTF-8)."""

    def render(self, content: Any) -> bytes:
        try:
            return pydantic_core.to_json(content, inf_nan_mode="null")
        except (ValueError, RecursionError):
            pass
        try:
            return json.dumps(_finite(content), separators=(",", ":")).encode()
        except RecursionError:
            return json.dumps(_finite(content, DEEPEST), separators=(",", ":")).encode()


#: How deep a value is shown when it nests past what ``json.dumps`` takes.
DEEPEST = 200
#: What stands for the part of a value below :data:`DEEPEST` levels.
CUT = "(nested too deep to show)"


def _finite(value: Any, room: int | None = None) -> Any:
    """``value`` with every NaN and infinity replaced by None (as JSON's null).

    With ``room``, dicts and lists more than ``room`` levels down become :data:`CUT`.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple) and room is not None:
        if room <= 0:
            return CUT
        room -= 1
    if isinstance(value, dict):
        return {key: _finite(item, room) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item, room) for item in value]
    return value
