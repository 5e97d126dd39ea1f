"""How deeply a JSON value nests, measured without recursion; whether its numbers are JSON's;
and whether its strings are text every store holds.

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


#: What :func:`text_fault` finds, as the end of a sentence naming where.
NOT_UNICODE = "a string that is not Unicode (a lone surrogate, such as \\ud800)"
HOLDS_NUL = "a NUL character (\\u0000), which PostgreSQL cannot store as text"
NOT_FINITE = "NaN or an infinity, which JSON has no number for"


def text_fault(value: Any) -> str | None:
    """Why a string in ``value`` (keys too, at any depth) cannot be stored; None if none.

    Two strings JSON's syntax allows and no store's text holds: a lone
    surrogate (:data:`NOT_UNICODE`; no UTF-8 text holds one) and U+0000
    (:data:`HOLDS_NUL`; PostgreSQL's text and JSON refuse it, so a task holding
    one could be neither recorded nor ended there). One pass of pydantic-core's
    encoder, which refuses the first and writes the second ``\\u0000``; only a
    value whose text holds that is walked again. ``value`` is within
    :data:`MAX_DEPTH` (:func:`too_deep` first).
    """
    try:
        text = pydantic_core.to_json(value, inf_nan_mode="constants")
    except pydantic_core.PydanticSerializationError:
        return NOT_UNICODE
    if b"\\u0000" in text and _holds_nul(value):
        return HOLDS_NUL
    return None


def storable(value: Any) -> str | None:
    """Why a task's answer (a result, an error's data) cannot be stored; None if it can.

    NaN and the infinities (:data:`NOT_FINITE`), or :func:`text_fault`'s.
    ``value`` is within :data:`MAX_DEPTH`.
    """
    if not shape(value)[1]:
        return NOT_FINITE
    return text_fault(value)


def _holds_nul(value: Any) -> bool:
    """Whether a string in ``value`` (keys too) holds U+0000 (no recursion)."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if type(item) is str:
                if "\x00" in item:
                    return True
            elif type(item) is dict:
                if any("\x00" in key for key in item):
                    return True
                below.extend(item.values())
            elif type(item) is list:
                below.extend(item)
        level = below
    return False


def clean_text(text: str) -> str:
    """``text`` with what no store's text holds (U+0000, lone surrogates) made U+FFFD.

    For what a task writes as words (its logs, a progress message, an error's
    message): kept, readable, and storable everywhere.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text
