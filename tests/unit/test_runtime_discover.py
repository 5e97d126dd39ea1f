"""tarea.runtime's ``rpc.discover``: an OpenRPC document from signatures, hints and docstrings."""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import pytest

from tarea.runtime import Registry, serve
from tarea.runtime.describe import ADDITIONAL_PARAMS, document, schema_of


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list, {"type": "array"}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (int | None, {"type": ["integer", "null"]}),
        (
            list[int] | str,
            {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "string"}]},
        ),
        (Literal["a", 1], {"enum": ["a", 1]}),
        (Any, {}),
        (int | Any, {}),
        (complex, {}),
    ],
)
def test_hints_become_json_schema(hint: Any, schema: dict[str, Any]) -> None:
    """Each hint the runtime checks becomes the JSON Schema of the values it accepts."""
    assert schema_of(hint) == schema


_NOT_JSON = object()


def _registry() -> Registry:
    reg = Registry()

    @reg.task
    def resize(
        url: str, width: int, height: int | None = None, mode: Literal["fit"] = "fit"
    ) -> dict[str, int]:
        """Resize an image.

        Longer text here.
        """
        return {}

    @reg.task(name="suma")
    def add(**values: float) -> float:
        return sum(values.values())

    @reg.task
    def untyped(x, y=_NOT_JSON):  # type: ignore[no-untyped-def]
        return x

    return reg


def test_the_document_describes_each_task_by_name() -> None:
    """Methods are sorted; params carry name, required and schema; defaults that are JSON stay."""
    doc = document(_registry())
    assert doc["openrpc"].startswith("1.")
    assert [m["name"] for m in doc["methods"]] == ["resize", "suma", "untyped"]
    resize = doc["methods"][0]
    assert resize["summary"] == "Resize an image."
    assert resize["description"] == "Resize an image.\n\nLonger text here."
    assert resize["paramStructure"] == "by-name"
    assert resize["params"] == [
        {"name": "url", "required": True, "schema": {"type": "string"}},
        {"name": "width", "required": True, "schema": {"type": "integer"}},
        {
            "name": "height",
            "required": False,
            "schema": {"type": ["integer", "null"], "default": None},
        },
        {"name": "mode", "required": False, "schema": {"enum": ["fit"], "default": "fit"}},
    ]
    assert resize["result"] == {
        "name": "result",
        "schema": {"type": "object", "additionalProperties": {"type": "integer"}},
    }
    assert ADDITIONAL_PARAMS not in resize


def test_kwargs_and_missing_hints() -> None:
    """**kwargs is x-tarea-additional-params; no hint: any value; a non-JSON default: left out."""
    methods = {m["name"]: m for m in document(_registry())["methods"]}
    assert methods["suma"]["params"] == []
    assert methods["suma"][ADDITIONAL_PARAMS] == {"type": "number"}
    assert methods["suma"]["result"]["schema"] == {"type": "number"}
    assert "summary" not in methods["suma"]
    assert methods["untyped"]["params"] == [
        {"name": "x", "required": True, "schema": {}},
        {"name": "y", "required": False, "schema": {}},
    ]


def test_rpc_discover_answers_over_the_protocol() -> None:
    """A request for rpc.discover is answered with the document; it is not listed in ready."""
    reg = _registry()
    stdin = io.BytesIO(b'{"jsonrpc":"2.0","id":7,"method":"rpc.discover"}\n')
    stdout = io.BytesIO()
    serve(stdin=stdin, stdout=stdout, registry=reg)
    ready, answer = (json.loads(line) for line in stdout.getvalue().splitlines())
    assert ready["params"]["functions"] == ["resize", "suma", "untyped"]
    assert answer["id"] == 7
    assert answer["result"] == json.loads(json.dumps(document(reg)))


def test_a_task_cannot_take_the_discover_name() -> None:
    """rpc.* names are reserved, so rpc.discover always describes."""
    with pytest.raises(ValueError, match="reserved"):
        Registry().add(lambda: 1, name="rpc.discover")
