"""The functions an image offers, as its ``rpc.discover`` describes them, and the check
of a call's params against them (pure: no I/O).

An image that answers ``rpc.discover`` (docs/protocol.md) hands tarea an
OpenRPC document. :func:`parse_openrpc` reads its methods;
:meth:`ImageFunctions.check` refuses a call that cannot fit before it is
recorded. The check covers the JSON Schema that tarea.runtime writes (``type``,
``enum``, ``const``, ``items``, ``properties``, ``required``,
``additionalProperties``, ``anyOf``/``oneOf``/``allOf``, and the numeric,
length and size bounds); any other keyword is not checked, so a schema tarea
does not understand never refuses a call the image would take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tarea.errors import BadParams, UnknownFunction

#: The method extension naming the schema of parameters the method does not list
#: (a Python task's ``**kwargs``). Without it, an unlisted parameter is refused.
ADDITIONAL_PARAMS = "x-tarea-additional-params"
#: How deep the check follows nested schemas (deeper values are not checked).
_MAX_DEPTH = 64
#: Keywords that constrain nothing but the type (checked first): a schema of
#: only these needs no further look.
_ANNOTATIONS = frozenset(
    {"type", "default", "title", "description", "examples", "format", "$comment"}
)
_PYTHON_TYPES: dict[str, type] = {"string": str, "array": list, "object": dict, "boolean": bool}
_BOUNDS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
    }
)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a method, by name."""

    name: str
    required: bool
    schema: Any


@dataclass(frozen=True, slots=True)
class Method:
    """One function of an image, as its OpenRPC document describes it."""

    name: str
    params: tuple[Param, ...]
    #: The schema of parameters not listed; None: those are refused.
    additional: Any = None
    summary: str = ""
    description: str = ""
    result: Any = True

    def check(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`BadParams` naming the first parameter that does not fit."""
        listed = {p.name for p in self.params}
        for param in self.params:
            if param.name not in params:
                if param.required:
                    raise BadParams(
                        f"{self.name}: missing required parameter {param.name!r}",
                        field=f"params.{param.name}",
                        reason="missing required parameter",
                    )
                continue
            _check_value(self.name, param.name, params[param.name], param.schema)
        for key, value in params.items():
            if key in listed:
                continue
            if self.additional is None:
                accepted = ", ".join(sorted(listed)) or "none"
                raise BadParams(
                    f"{self.name}: unknown parameter {key!r} (accepted: {accepted})",
                    field=f"params.{key}",
                    reason="unknown parameter",
                )
            _check_value(self.name, key, value, self.additional)


@dataclass(frozen=True, slots=True)
class ImageFunctions:
    """What one image (by id) offers: described by itself, or only named in ``ready``."""

    image_id: str
    protocol: str
    #: Whether the image answered ``rpc.discover``: only then are calls checked.
    described: bool
    #: Function names, sorted (from the description, else from ``ready``; none for
    #: seed-HTTP images, which do not say).
    names: tuple[str, ...] = ()
    methods: Mapping[str, Method] = field(default_factory=dict)
    #: The image's OpenRPC document as it sent it, when it did.
    document: Mapping[str, Any] | None = None

    def check(self, function: str, params: Mapping[str, Any]) -> None:
        """Refuse a call that cannot fit the image's description (nothing if it has none).

        Raises:
            UnknownFunction: the image describes itself and has no ``function``.
            BadParams: ``params`` do not fit the function's (the field is named).
        """
        if not self.described:
            return
        method = self.methods.get(function)
        if method is None:
            offered = ", ".join(sorted(self.methods)) or "none"
            raise UnknownFunction(
                f"the image has no function {function!r} (it offers: {offered})",
                field="function",
            )
        method.check(params)


def parse_openrpc(document: Any) -> dict[str, Method]:
    """The methods of an OpenRPC document, by name.

    Raises:
        ValueError: the document is not an OpenRPC document tarea can read.
    """
    if not isinstance(document, dict) or not isinstance(document.get("methods"), list):
        raise ValueError("an OpenRPC document is an object with a list of methods")
    methods: dict[str, Method] = {}
    for index, raw in enumerate(document["methods"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError(f"methods[{index}] is not a method object with a name")
        name = raw["name"]
        if raw.get("paramStructure") == "by-position":
            raise ValueError(f"method {name!r} takes its params by position; tarea sends names")
        params = []
        for p_index, p in enumerate(raw.get("params") or []):
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise ValueError(f"method {name!r}: params[{p_index}] has no name")
            params.append(Param(p["name"], p.get("required") is True, p.get("schema", True)))
        result = raw.get("result")
        methods[name] = Method(
            name=name,
            params=tuple(params),
            additional=raw.get(ADDITIONAL_PARAMS),
            summary=str(raw.get("summary") or ""),
            description=str(raw.get("description") or ""),
            result=result.get("schema", True) if isinstance(result, dict) else True,
        )
    return methods


def _check_value(function: str, name: str, value: Any, schema: Any) -> None:
    found = violation(value, schema)
    if found is not None:
        path, reason = found
        field_name = ".".join(["params", name, *path])
        where = name + "".join(f"[{p}]" for p in path)
        raise BadParams(
            f"{function}: parameter {where!r}: {reason}", field=field_name, reason=reason
        )


def violation(value: Any, schema: Any, depth: int = 0) -> tuple[list[str], str] | None:
    """Where and why ``value`` breaks ``schema`` (a path into the value, a reason), or None."""
    if schema is True or schema is None or depth > _MAX_DEPTH:
        return None
    if schema is False:
        return [], "no value is allowed here"
    if not isinstance(schema, dict):
        return None
    expected = schema.get("type")
    if isinstance(expected, str):
        if not _is_type(value, expected):
            return [], f"expected {expected}, got {json_type(value)}"
    elif isinstance(expected, list) and not any(_is_type(value, t) for t in expected):
        return [], f"expected {' or '.join(str(t) for t in expected)}, got {json_type(value)}"
    if schema.keys() <= _ANNOTATIONS:  # the common case: a type and nothing to check inside
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_same(value, option) for option in enum):
        listed = ", ".join(_short(o) for o in enum[:10])
        return [], f"expected one of {listed}, got {_short(value)}"
    if "const" in schema and not _same(value, schema["const"]):
        return [], f"expected {_short(schema['const'])}, got {_short(value)}"
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        if isinstance(options, list) and options:
            found = [violation(value, option, depth + 1) for option in options]
            if all(f is not None for f in found):
                # Say why it is not the one form its JSON type could be, if only one.
                typed = [f for f, o in zip(found, options, strict=True) if _admits(o, value)]
                typed = found if len(found) == 1 else typed
                if len(typed) == 1 and typed[0] is not None:
                    return typed[0]
                return [], f"fits none of the {len(options)} allowed forms (got {json_type(value)})"
    for option in schema.get("allOf") or []:
        found_all = violation(value, option, depth + 1)
        if found_all is not None:
            return found_all
    return _bounds(value, schema) or _children(value, schema, depth)


def _bounds(value: Any, schema: dict[str, Any]) -> tuple[list[str], str] | None:
    if not schema.keys() & _BOUNDS:
        return None
    if _is_type(value, "number"):
        for keyword, sign in (
            ("minimum", -1),
            ("maximum", 1),
            ("exclusiveMinimum", -1),
            ("exclusiveMaximum", 1),
        ):
            bound = schema.get(keyword)
            if not _is_type(bound, "number"):
                continue
            past = value < bound if sign < 0 else value > bound
            if past or (keyword.startswith("exclusive") and value == bound):
                return [], f"{value!r} breaks {keyword} {bound!r}"
    for keyword, kind, size in (
        ("minLength", "string", min),
        ("maxLength", "string", max),
        ("minItems", "array", min),
        ("maxItems", "array", max),
        ("minProperties", "object", min),
        ("maxProperties", "object", max),
    ):
        bound = schema.get(keyword)
        if isinstance(bound, int) and _is_type(value, kind):
            length = len(value)
            if (size is min and length < bound) or (size is max and length > bound):
                return [], f"has {length}, {keyword} is {bound}"
    return None


def _children(value: Any, schema: dict[str, Any], depth: int) -> tuple[list[str], str] | None:
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict | bool):
            for index, item in enumerate(value):
                found = violation(item, items, depth + 1)
                if found is not None:
                    return [str(index), *found[0]], found[1]
        return None
    if not isinstance(value, dict):
        return None
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    for key in schema.get("required") or []:
        if isinstance(key, str) and key not in value:
            return [key], "missing required property"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = properties.get(key, extra)
        found = violation(item, sub, depth + 1)
        if found is not None:
            if sub is False:
                return [str(key)], "unknown property"
            return [str(key), *found[0]], found[1]
    return None


def _is_type(value: Any, name: Any) -> bool:
    simple = _PYTHON_TYPES.get(name)
    if simple is not None:
        return isinstance(value, simple)
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    return True  # a type tarea does not know: not checked


def _admits(schema: Any, value: Any) -> bool:
    """Whether ``schema``'s ``type`` (if it has one) admits ``value``'s JSON type."""
    if not isinstance(schema, dict) or "type" not in schema:
        return True
    expected = schema["type"]
    types = [expected] if isinstance(expected, str) else expected
    return not isinstance(types, list) or any(_is_type(value, t) for t in types)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    for python_type, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    ):
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
