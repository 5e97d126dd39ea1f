"""Checking a call's params against an image's OpenRPC description, before dispatch."""

from __future__ import annotations

from typing import Any

import pytest

from tarea.domain.functions import ImageFunctions, parse_openrpc, violation
from tarea.errors import BadParams, UnknownFunction
from tarea.runtime import Registry
from tarea.runtime.describe import document


def _functions() -> ImageFunctions:
    reg = Registry()

    @reg.task
    def resize(
        url: str, width: int, height: int | None = None, tags: list[str] | None = None
    ) -> int:
        return width

    @reg.task
    def suma(**values: float) -> float:
        return 0.0

    @reg.task
    def anything(x, y: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
        return x

    doc = document(reg)
    methods = parse_openrpc(doc)
    return ImageFunctions("sha256:x", "jsonrpc-stdio/1", True, tuple(methods), methods, doc)


@pytest.mark.parametrize(
    ("function", "params"),
    [
        ("resize", {"url": "u", "width": 3}),
        ("resize", {"url": "u", "width": 3.0, "height": None, "tags": ["a"]}),
        ("suma", {}),
        ("suma", {"a": 1, "b": 2.5}),
        ("anything", {"x": {"deep": [1, None]}}),
        ("anything", {"x": 1, "y": {"k": 2}}),
    ],
)
def test_params_that_fit_pass(function: str, params: dict[str, Any]) -> None:
    """Params that fit the described schema are accepted (an integral float is an integer)."""
    _functions().check(function, params)


@pytest.mark.parametrize(
    ("function", "params", "field", "reason"),
    [
        ("resize", {"width": 3}, "params.url", "missing required parameter"),
        ("resize", {"url": "u", "width": "3"}, "params.width", "expected integer, got string"),
        ("resize", {"url": "u", "width": True}, "params.width", "expected integer, got boolean"),
        ("resize", {"url": "u", "width": 1.5}, "params.width", "expected integer, got number"),
        ("resize", {"url": "u", "width": 1, "zoom": 2}, "params.zoom", "unknown parameter"),
        (
            "resize",
            {"url": "u", "width": 1, "tags": ["a", 2]},
            "params.tags.1",
            "expected string, got integer",
        ),
        (
            "resize",
            {"url": "u", "width": 1, "height": "x"},
            "params.height",
            "expected integer or null, got string",
        ),
        ("suma", {"a": 1, "b": "dos"}, "params.b", "expected number, got string"),
        (
            "anything",
            {"x": 1, "y": {"k": "v"}},
            "params.y.k",
            "expected integer, got string",
        ),
    ],
)
def test_params_that_break_the_schema_name_the_field(
    function: str, params: dict[str, Any], field: str, reason: str
) -> None:
    """A call whose params break the schema is refused as bad_params naming the field and why."""
    with pytest.raises(BadParams) as caught:
        _functions().check(function, params)
    assert caught.value.code == "bad_params"
    assert caught.value.field == field
    assert caught.value.reason == reason
    assert field.split(".")[1] in caught.value.message


def test_an_unknown_function_is_refused_when_the_image_describes_itself() -> None:
    """A function the description lacks is unknown_function on the field "function"."""
    with pytest.raises(UnknownFunction) as caught:
        _functions().check("raiz", {})
    assert caught.value.field == "function"
    assert "anything, resize, suma" in caught.value.message


def test_an_image_that_does_not_describe_itself_checks_nothing() -> None:
    """Without a description, any function and params go through (the image decides)."""
    ImageFunctions("sha256:y", "jsonrpc-stdio/1", False, ("suma",)).check("raiz", {"a": object()})
    ImageFunctions("sha256:z", "seed-http", False).check("x", {})


@pytest.mark.parametrize(
    ("value", "schema", "found"),
    [
        (3, {"type": "integer", "minimum": 5}, ([], "3 breaks minimum 5")),
        ("abc", {"type": "string", "maxLength": 2}, ([], "has 3, maxLength is 2")),
        ("c", {"enum": ["a", "b"]}, ([], "expected one of 'a', 'b', got 'c'")),
        (1, {"enum": [True]}, ([], "expected one of True, got 1")),
        ({"a": 1}, {"type": "object", "required": ["b"]}, (["b"], "missing required property")),
        ({"a": 1}, {"properties": {}, "additionalProperties": False}, (["a"], "unknown property")),
        (
            {"a": {"b": "x"}},
            {"properties": {"a": {"properties": {"b": {"type": "integer"}}}}},
            (["a", "b"], "expected integer, got string"),
        ),
        (1, {"allOf": [{"type": "number"}, {"maximum": 0}]}, ([], "1 breaks maximum 0")),
        ("x", {"anyOf": [{"type": "integer"}]}, ([], "expected integer, got string")),
        (
            "x",
            {"anyOf": [{"type": "integer"}, {"type": "array"}]},
            ([], "fits none of the 2 allowed forms (got string)"),
        ),
        ("x", False, ([], "no value is allowed here")),
        ("x", {"format": "uri", "pattern": "^z", "$ref": "#/x"}, None),
        ("x", {"type": "mystery"}, None),
        (1.0, {"const": 1}, None),
    ],
)
def test_json_schema_subset(value: Any, schema: Any, found: tuple[list[str], str] | None) -> None:
    """The keywords tarea checks refuse what breaks them; keywords it does not know pass."""
    assert violation(value, schema) == found


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"methods": "no"},
        {"methods": [{"params": []}]},
        {"methods": [{"name": "f", "params": [{"schema": {}}]}]},
        {"methods": [{"name": "f", "paramStructure": "by-position", "params": []}]},
    ],
)
def test_documents_tarea_cannot_read_are_refused(doc: Any) -> None:
    """A malformed description is a ValueError (the image is then treated as undescribed)."""
    with pytest.raises(ValueError, match=r"\w"):
        parse_openrpc(doc)
