"""Bind a call's JSON parameters (an object, by name) to a task's signature.

Values are checked against the type hints, the way JSON can carry them:

========================  ==========================================
hint                      accepts
========================  ==========================================
``int``                   an integer (never ``true``/``false``)
``float``                 an integer or a number (never a boolean)
``str`` / ``bool``        a string / a boolean
``list`` / ``list[X]``    an array (each item checked against ``X``)
``dict`` / ``dict[str, X]`` an object (each value checked against ``X``)
``X | Y``, ``X | None``   anything either member accepts
``Literal["a", 1]``       one of the listed values
``Any``, no annotation    anything
anything else             anything (not checked)
========================  ==========================================

Values are passed through unchanged: an integer given for a ``float``
parameter stays an ``int``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ParamError

_NAMED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)
_JSON_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def bind(
    signature: inspect.Signature, hints: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Return ``(args, kwargs)`` to call the task with, or raise :class:`ParamError`."""
    named = [p for p in signature.parameters.values() if p.kind in _NAMED]
    var_keyword = next(
        (p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD),
        None,
    )
    known = {p.name for p in named}
    if var_keyword is None:
        for key in params:
            if key not in known:
                accepted = ", ".join(p.name for p in named) or "none"
                raise ParamError(
                    key,
                    "unknown parameter",
                    f"unknown parameter {key!r} (accepted: {accepted})",
                )

    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for parameter in named:
        if parameter.name in params:
            value = params[parameter.name]
            _check_param(parameter.name, value, hints.get(parameter.name, Any))
        elif parameter.default is inspect.Parameter.empty:
            raise ParamError(
                parameter.name,
                "missing required parameter",
                f"missing required parameter {parameter.name!r}",
            )
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            value = parameter.default
        else:
            continue
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[parameter.name] = value

    if var_keyword is not None:
        hint = hints.get(var_keyword.name, Any)
        for key, value in params.items():
            if key not in known:
                _check_param(key, value, hint)
                kwargs[key] = value
    return args, kwargs


def _check_param(name: str, value: Any, hint: Any) -> None:
    reason = check(value, hint)
    if reason is not None:
        raise ParamError(name, reason, f"parameter {name!r}: {reason}")


def check(value: Any, hint: Any) -> str | None:
    """Return why ``value`` does not fit ``hint``, or ``None`` when it does."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return None
    if hint is None or hint is type(None):
        return None if value is None else _mismatch(hint, value)
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        members = get_args(hint)
        if any(check(value, member) is None for member in members):
            return None
        others = [m for m in members if m is not type(None)]
        if len(others) == 1:  # Optional[X] given something else: say why it is not an X
            return check(value, others[0])
        return _mismatch(hint, value)
    if origin is Literal:
        allowed = get_args(hint)
        if any(value == a and type(value) is type(a) for a in allowed):
            return None
        return f"expected {describe(hint)}, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else _mismatch(hint, value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else _mismatch(hint, value)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else _mismatch(hint, value)
    if hint is str:
        return None if isinstance(value, str) else _mismatch(hint, value)
    if hint is list or origin is list:
        if not isinstance(value, list):
            return _mismatch(hint, value)
        (item_hint,) = get_args(hint) or (Any,)
        for index, item in enumerate(value):
            reason = check(item, item_hint)
            if reason is not None:
                return f"item {index}: {reason}"
        return None
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return _mismatch(hint, value)
        value_hint = get_args(hint)[1] if get_args(hint) else Any
        for key, item in value.items():
            reason = check(item, value_hint)
            if reason is not None:
                return f"key {key!r}: {reason}"
        return None
    return None  # a hint JSON cannot express: not checked


def describe(hint: Any) -> str:
    """Name a type hint in JSON terms: ``float`` is "number", ``list[int]`` "array of integer"."""
    if hint is None:
        return "null"
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(describe(member) for member in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is list and get_args(hint):
        return f"array of {describe(get_args(hint)[0])}"
    if origin is dict and len(get_args(hint)) == 2:
        return f"object of {describe(get_args(hint)[1])}"
    if isinstance(hint, type) and hint in _JSON_NAMES:
        return _JSON_NAMES[hint]
    return getattr(hint, "__name__", repr(hint))


def json_type(value: Any) -> str:
    """Name the JSON type of a decoded value."""
    for python_type in (bool, int, float, str, list, dict, type(None)):
        if isinstance(value, python_type):
            return _JSON_NAMES[python_type]
    return type(value).__name__


def _mismatch(hint: Any, value: Any) -> str:
    return f"expected {describe(hint)}, got {json_type(value)}"
