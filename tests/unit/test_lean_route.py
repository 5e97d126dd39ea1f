"""LeanRoute parses an endpoint's arguments as FastAPI would: same values, same 422s."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from tarea.api.lean import LeanRoute


class Body(BaseModel):
    image: str = Field(min_length=1)
    params: dict[str, Any] = {}
    count: int = 1


async def endpoint(
    body: Body,
    request: Request,
    key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=5)] = None,
    wait: Annotated[bool, Query()] = False,
    limit: Annotated[int, Query(ge=1, le=10)] = 3,
) -> Response:
    payload = {
        "body": body.model_dump(),
        "key": key,
        "wait": wait,
        "limit": limit,
        "method": request.method,
    }
    # json.dumps escapes what UTF-8 cannot carry (a lone surrogate in params).
    return Response(json.dumps(payload), media_type="application/json")


def client(route_class: type[APIRoute]) -> TestClient:
    app = FastAPI()
    app.router.add_api_route("/t", endpoint, methods=["POST"], route_class_override=route_class)
    return TestClient(app)


LEAN, PLAIN = client(LeanRoute), client(APIRoute)

CASES: list[tuple[str, dict[str, Any]]] = [
    ("valid", {"json": {"image": "a", "params": {"x": [1, 2]}}}),
    (
        "valid with query and header",
        {
            "json": {"image": "a"},
            "params": {"wait": "true", "limit": "7"},
            "headers": {"Idempotency-Key": "k1"},
        },
    ),
    ("wait spelled 1", {"json": {"image": "a"}, "params": {"wait": "1"}}),
    ("wait not a bool", {"json": {"image": "a"}, "params": {"wait": "maybe"}}),
    ("limit out of range", {"json": {"image": "a"}, "params": {"limit": "11"}}),
    ("key too long", {"json": {"image": "a"}, "headers": {"Idempotency-Key": "toolong"}}),
    ("field missing", {"json": {"params": {}}}),
    ("field of the wrong type", {"json": {"image": "a", "count": "many"}}),
    ("constraint broken", {"json": {"image": ""}}),
    ("not an object", {"json": [1, 2]}),
    ("empty body", {"content": b"", "headers": {"Content-Type": "application/json"}}),
    ("no content type", {"content": b'{"image": "a"}'}),
    (
        "text content type",
        {"content": b'{"image": "a"}', "headers": {"Content-Type": "text/plain"}},
    ),
    (
        "+json content type",
        {
            "content": b'{"image": "a"}',
            "headers": {"Content-Type": "application/vnd.x+json; charset=utf-8"},
        },
    ),
    ("broken JSON", {"content": b'{"image": ', "headers": {"Content-Type": "application/json"}}),
    (
        "not UTF-8",
        {"content": b'{"image": "\xe4\xff"}', "headers": {"Content-Type": "application/json"}},
    ),
    (
        "UTF-16",
        {
            "content": '{"image": "a"}'.encode("utf-16"),
            "headers": {"Content-Type": "application/json"},
        },
    ),
    (
        "UTF-8 with a BOM",
        {"content": b'\xef\xbb\xbf{"image": "a"}', "headers": {"Content-Type": "application/json"}},
    ),
    (
        "a lone surrogate",
        {
            "content": b'{"image": "a", "params": {"s": "\\ud800"}}',
            "headers": {"Content-Type": "application/json"},
        },
    ),
    (
        "deep nesting",
        {
            "content": b'{"image": "a", "params": {"x": ' + b"[" * 600 + b"]" * 600 + b"}}",
            "headers": {"Content-Type": "application/json"},
        },
    ),
    (
        "nesting too deep for json.loads",
        {
            "content": b'{"image": "a", "params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            "headers": {"Content-Type": "application/json"},
        },
    ),
    ("errors everywhere", {"json": {"count": "x"}, "params": {"wait": "no way"}}),
]


def _shape(response: Any) -> tuple[int, Any]:
    body = response.json()
    if response.status_code == 422:
        return 422, [(tuple(e["loc"]), e["type"], e["msg"]) for e in body["detail"]]
    return response.status_code, body


@pytest.mark.parametrize(("name", "request_kwargs"), CASES, ids=[c[0] for c in CASES])
def test_lean_route_answers_as_fastapi_does(name: str, request_kwargs: dict[str, Any]) -> None:
    """Values, status codes, error locations, types and messages are FastAPI's."""
    assert _shape(LEAN.post("/t", **request_kwargs)) == _shape(PLAIN.post("/t", **request_kwargs))


def test_openapi_is_the_declared_signatures() -> None:
    """The schema is built from the endpoint, whichever route class serves it."""
    assert LEAN.get("/openapi.json").json() == PLAIN.get("/openapi.json").json()


def test_an_endpoint_it_cannot_serve_is_refused_when_the_app_is_built() -> None:
    """Dependencies (or path, cookie, form parameters) are refused up front, not per request."""

    async def needs_a_dependency(
        body: Body, user: Annotated[str, Depends(lambda: "u")]
    ) -> Response:
        return Response()

    app = FastAPI()
    with pytest.raises(TypeError, match="dependencies"):
        app.router.add_api_route(
            "/d", needs_a_dependency, methods=["POST"], route_class_override=LeanRoute
        )
