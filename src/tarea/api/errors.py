"""API errors as RFC 9457 problem details, each with a stable ``code``.

Every error the API answers has ``Content-Type: application/problem+json`` and
the body ``{"type", "title", "status", "detail", "code", ...}``. No traceback
ever reaches a client: an unexpected exception is logged and answered 500
``internal_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tarea.codes import STATUS_OF_CODE
from tarea.domain import nesting
from tarea.errors import EngineUnavailable, InvalidRequest, TareaError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document, with tarea's stable ``code``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:tarea:problem:task_not_found",
                    "title": "Task not found",
                    "status": 404,
                    "detail": "no task '01a21f...'",
                    "code": "task_not_found",
                }
            ]
        },
    )

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code.")


_WHY: dict[int, str] = {
    401: "No valid API key (when TAREA_API_KEYS is set).",
    403: "The image is not allowed on this server (image_not_allowed), or the route "
    "needs an operator key (forbidden).",
    404: "No such resource.",
    409: "The task already ended.",
    413: "The request body is over TAREA_MAX_BODY_KB.",
    422: "Invalid request: the problem names the field.",
    424: "The image could not be pulled.",
    429: "The tenant has too many tasks queued or running.",
    500: "An unexpected error (logged).",
    503: "Draining, queue full, or the Docker engine does not answer.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each a problem+json document."""
    schema = Problem.model_json_schema()
    return {
        status: {
            "description": _WHY.get(status, "An error."),
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }


class ProblemError(Exception):
    """Raise from a route to answer a problem document."""

    def __init__(self, code: str, detail: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status or STATUS_OF_CODE.get(code, 400)
        self.extra = extra


def problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"urn:tarea:problem:{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return problem(422, "validation_error", _describe(errors), errors=errors)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        extra = {"field": exc.field} if exc.field else {}
        reason = getattr(exc, "reason", None)  # BadParams: why the field does not fit
        if reason is not None:
            extra["reason"] = reason
        return problem(422, exc.code, exc.message, **extra)

    @app.exception_handler(EngineUnavailable)
    async def _engine(_: Request, exc: EngineUnavailable) -> JSONResponse:
        log.warning("engine unavailable: %s", exc.message)
        return problem(503, exc.code, "the Docker engine does not answer; try again later")

    @app.exception_handler(TareaError)
    async def _tarea(_: Request, exc: TareaError) -> JSONResponse:
        code = getattr(exc, "code", "internal_error")
        status = STATUS_OF_CODE.get(code, 500)
        if status >= 500 and code == "internal_error":
            log.error("unmapped error: %r", exc)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        response = problem(status, code, getattr(exc, "message", None) or str(exc))
        if headers:
            response.headers.update(headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # json.loads gave up on the body's nesting (~1,000 levels deep).
            return problem(
                422,
                "too_deep",
                "the request body nests too deeply to be read: params and metadata "
                f"may nest at most {nesting.MAX_DEPTH} levels",
            )
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8): invalid
            # input like any other, answered as the documented 422.
            return problem(422, "validation_error", "the request body is not valid UTF-8 JSON")
        code = {404: "not_found", 413: "request_too_large"}.get(
            exc.status_code, f"http_{exc.status_code}"
        )
        response = problem(exc.status_code, code, str(exc.detail))
        if exc.headers:  # e.g. Allow on a 405
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went, or was closed for sending its body too slowly
        # (api/connections.py): nobody hears this answer, and nothing broke.
        return problem(400, "client_disconnected", "the client closed the connection")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "an unexpected error occurred; it was logged")
