"""``rpc.discover``: the OpenRPC document of an image's tasks, from their signatures.

Each ``@task`` function becomes one OpenRPC method: its parameters by name
(``paramStructure: "by-name"``), each with a JSON Schema made from its type
hint, its result's schema from the return hint, and its docstring (the first
line as ``summary``, the whole as ``description``). A function taking
``**kwargs`` says so with ``x-tarea-additional-params``: the schema every
parameter it does not name must fit.

=============================  ==========================================
hint                           JSON Schema
=============================  ==========================================
``int`` / ``float``            ``{"type": "integer"}`` / ``{"type": "number"}``
``str`` / ``bool``             ``{"type": "string"}`` / ``{"type": "boolean"}``
``None``                       ``{"type": "null"}``
``list[X]`` / ``dict[str, X]`` an array of X / an object of X
``X | Y``                      ``{"anyOf": [X, Y]}``
``Literal["a", 1]``            ``{"enum": ["a", 1]}``
``Any``, none, other types     ``{}`` (anything)
=============================  ==========================================
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from .registry import Registry, Task

#: The OpenRPC version of the documents this module writes.
OPENRPC_VERSION = "1.3.2"
#: The method extension naming the schema of parameters a function takes by ``**kwargs``.
ADDITIONAL_PARAMS = "x-tarea-additional-params"

_SIMPLE: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    None: "null",
    list: "array",
    dict: "object",
}
_NAMED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def schema_of(hint: Any) -> dict[str, Any]:
    """The JSON Schema of the values a type hint accepts (see the module docstring)."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Union or origin is types.UnionType:
        members = [schema_of(member) for member in args]
        if any(member == {} for member in members):
            return {}
        if all(set(m) == {"type"} and isinstance(m["type"], str) for m in members):
            return {"type": [m["type"] for m in members]}
        return {"anyOf": members}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])} if args else {"type": "array"}
    if origin is dict:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": schema_of(args[1])}
        return {"type": "object"}
    return {}


def method_of(task: Task) -> dict[str, Any]:
    """The OpenRPC method object of one task."""
    hints = task.hints
    params: list[dict[str, Any]] = []
    method: dict[str, Any] = {"name": task.name, "paramStructure": "by-name"}
    doc = inspect.getdoc(task.function)
    if doc:
        method["summary"] = doc.splitlines()[0].strip()
        method["description"] = doc
    for parameter in task.signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            method[ADDITIONAL_PARAMS] = schema_of(hints.get(parameter.name, Any))
            continue
        if parameter.kind not in _NAMED:
            continue  # *args: nothing can reach it by name
        schema = schema_of(hints.get(parameter.name, Any))
        required = parameter.default is inspect.Parameter.empty
        if not required and _is_json(parameter.default):
            schema = {**schema, "default": parameter.default}
        params.append({"name": parameter.name, "required": required, "schema": schema})
    method["params"] = params
    method["result"] = {"name": "result", "schema": schema_of(hints.get("return", Any))}
    return method


def document(registry: Registry, *, title: str = "tarea task image") -> dict[str, Any]:
    """The OpenRPC document of every task in ``registry``, methods sorted by name."""
    methods = []
    for name in registry.names():
        task = registry.get(name)
        assert task is not None
        methods.append(method_of(task))
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": title, "version": "1", "x-tarea-protocol": "tarea/1"},
        "methods": methods,
    }


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
