"""How deeply a JSON value nests, measured without recursion; and whether its numbers are JSON's.

Every part of the server that walks a task's JSON (pydantic-core's encoder,
``json.dumps``, the store) recurses, and each gives up somewhere between 200
and 1,000 levels: a value nested past that is a task whose record can never be
shown again. So params, metadata and results are held to :data:`MAX_DEPTH`
levels at the door (422 ``too_deep`` at submit, ``protocol_error`` for a
result), far below every limit behind it (docs/security.md).
"""

from __future__ import annotations

import math
from typing import Any

import pydantic_core

#: The deepest params, metadata or result a task may have: ``{"a": 1}`` is 1.
MAX_DEPTH = 64
#: What nests in a JSON value, as JSON parsers make it (exact types).
_CONTAINERS = frozenset({dict, list})


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How many dicts and lists ``value`` nests, counted up to ``limit + 1`` at most.

    A scalar is 0, ``{}`` and ``[1]`` are 1, ``{"a": [1]}`` is 2. The walk goes
    level by level, never recursing, and stops on the first level past
    ``limit``: a value nested 100,000 deep costs ``limit`` levels, not more.
    A level of scalars only is passed over by C code (``map(type, ..)``):
    100,000 numbers cost ~2.5 ms, a small dict ~1 µs.
    """
    level = [value] if type(value) in _CONTAINERS else []
    found = 0
    while level:
        found += 1
        if found > limit:
            break
        below: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            if not _CONTAINERS.isdisjoint(map(type, items)):
                below.extend(item for item in items if type(item) in _CONTAINERS)
        level = below
    return found


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` deep."""
    return depth(value, limit) > limit


def shape(value: Any, limit: int = MAX_DEPTH) -> tuple[int, bool]:
    """:func:`depth`, and whether every number down to that depth is finite.

    NaN and the infinities are numbers Python's JSON parser takes (the tokens
    ``NaN``, ``Infinity``) but JSON has none of: a task holding one could be
    neither stored as JSON nor sent to its container. Slower than
    :func:`depth` on many floats (each is looked at: ~8 ms for 100,000), so
    only a new task's params and metadata are walked this way.
    """
    if type(value) is float:
        return 0, math.isfinite(value)
    level = [value] if type(value) in _CONTAINERS else []
    found = 0
    finite = True
    while level:
        found += 1
        if found > limit:
            break
        below: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            kinds = set(map(type, items))
            if float in kinds and finite:
                finite = all(math.isfinite(item) for item in items if type(item) is float)
            if not _CONTAINERS.isdisjoint(kinds):
                below.extend(item for item in items if type(item) in _CONTAINERS)
        level = below
    return found, finite


def unicode(value: Any) -> bool:
    """Whether every string in ``value`` (keys too) is Unicode: Python's JSON parser takes
    ``"\\ud800"``, a lone surrogate, which no UTF-8 text (nor PostgreSQL's JSON) holds.

    pydantic-core's encoder refuses such a string; a value past what it nests
    is :func:`too_deep` and refused before.
    """
    try:
        pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError:
        return False
    return True
