"""A lean request handler for the hot route, ``POST /v1/tasks``.

FastAPI's generic handler reads the body, parses its content type with
``email.message``, decodes the JSON with ``json.loads``, then solves the
endpoint's dependencies and validates the decoded dict against the model: a
warm task paid ~18% of its server CPU there (py-spy, docs/performance.md).

:class:`LeanRoute` keeps the endpoint, its signature and so its OpenAPI
exactly as declared, and only replaces that argument solving with a plan made
once per route: a valid body is validated straight from its bytes by
pydantic-core (``model_validate_json``: JSON handled once), query and header
parameters by FastAPI's own fields. A body pydantic-core refuses goes through
FastAPI's own steps (``json.loads``, then the body field), which either take
it (what only ``json.loads`` reads: UTF-16, a BOM, a lone surrogate, deep
nesting) or describe it, so clients get the same answer, word for word.

It serves endpoints whose parameters are a ``Request``, query and header
parameters, and at most one JSON body model, and which return a ``Response``;
a route declaring anything else (dependencies, path or cookie parameters,
forms) is refused when the app is built, not at the first request.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON (``application/json`` or ``application/*+json``)."""
    if not content_type:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _missing(*loc: str) -> dict[str, Any]:
    return {"type": "missing", "loc": loc, "msg": "Field required", "input": None}


@dataclass(frozen=True)
class _Plan:
    """How to get each argument of one endpoint from a request."""

    request_name: str | None
    #: (source, field): source is "query" or "header".
    scalars: tuple[tuple[str, Any], ...]
    body_name: str | None
    body_model: type[BaseModel] | None
    body_required: bool

    @classmethod
    def of(cls, route: APIRoute) -> _Plan:
        dependant = route.dependant
        unsupported = [
            what
            for what, present in (
                ("dependencies", dependant.dependencies),
                ("path parameters", dependant.path_params),
                ("cookie parameters", dependant.cookie_params),
                ("more than one body parameter", len(dependant.body_params) > 1),
            )
            if present
        ]
        body_model: type[BaseModel] | None = None
        body_name = None
        body_required = False
        if route.body_field is not None:
            annotation = route.body_field.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                body_model = annotation
                body_name = dependant.body_params[0].name
                body_required = route.body_field.field_info.is_required()
            else:
                unsupported.append("a body that is not one pydantic model")
        if unsupported:
            raise TypeError(f"LeanRoute cannot serve {route.path}: {', '.join(unsupported)}")
        return cls(
            request_name=dependant.request_param_name,
            scalars=(
                *(("query", field) for field in dependant.query_params),
                *(("header", field) for field in dependant.header_params),
            ),
            body_name=body_name,
            body_model=body_model,
            body_required=body_required,
        )


class LeanRoute(APIRoute):
    """An ``APIRoute`` whose arguments are parsed by a plan made once (see the module)."""

    def get_route_handler(self) -> Handler:
        plan = _Plan.of(self)
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            errors: list[Any] = []
            kwargs: dict[str, Any] = {}
            if plan.request_name is not None:
                kwargs[plan.request_name] = request
            for source, field in plan.scalars:
                values = request.query_params if source == "query" else request.headers
                raw = values.get(field.alias)
                if raw is None:
                    if field.field_info.is_required():
                        errors.append(_missing(source, field.alias))
                    else:
                        kwargs[field.name] = field.get_default()
                    continue
                value, field_errors = field.validate(raw, loc=(source, field.alias))
                errors.extend(field_errors)
                kwargs[field.name] = value
            body = await request.body() if plan.body_model is not None else b""
            if plan.body_model is not None and plan.body_name is not None:
                if not body:
                    if plan.body_required:
                        errors.append(_missing("body"))
                    else:
                        kwargs[plan.body_name] = None
                else:
                    is_json = _is_json(request.headers.get("content-type"))
                    parsed: Any = None
                    if is_json:
                        with contextlib.suppress(ValidationError):
                            parsed = plan.body_model.model_validate_json(body)
                    if parsed is None:
                        # FastAPI's own steps decide: they describe invalid input
                        # word for word, and take what only json.loads reads
                        # (UTF-16, a BOM, a lone surrogate, deep nesting).
                        parsed, body_errors = self._fastapi_body(json_body=is_json, body=body)
                        errors.extend(body_errors)
                    kwargs[plan.body_name] = parsed
            if errors:
                raise RequestValidationError(errors, body=body)
            response = await endpoint(**kwargs)
            if not isinstance(response, Response):
                raise TypeError(f"{self.path}: a LeanRoute endpoint must return a Response")
            return response

        return handler

    def _fastapi_body(self, *, json_body: bool, body: bytes) -> tuple[Any, list[Any]]:
        """The body as FastAPI's own handler reads it: its value, or its errors."""
        assert self.body_field is not None
        try:
            value: Any = json.loads(body) if json_body else body
        except json.JSONDecodeError as exc:
            return None, [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        except (ValueError, RecursionError) as exc:  # not text at all: FastAPI's 400
            raise HTTPException(400, "There was an error parsing the body") from exc
        validated, errors = self.body_field.validate(value, loc=("body",))
        return validated, list(errors)
