"""Logging set-up: plain text or one JSON object per line, a line per task end,
and the request id of the request being served.

``TAREA_LOG_FORMAT=json`` writes every record as one JSON object per line
(``ts``, ``level``, ``logger``, ``message``, and ``request_id`` while a
request is served, plus the record's ``extra`` fields). In that format each
task end is one line of the ``tarea.task_end`` logger: id, tenant, image,
function, status, code, attempt and timings. In text format task ends are not
logged (``TAREA_LOG_TASK_ENDS=true`` turns them on there too).

:class:`RequestId` accepts a client's ``X-Request-Id`` (up to 128 printable
characters) or makes one, echoes it on the response, and holds it in a
context variable for log lines written meanwhile (uvicorn's access log too,
when ``TAREA_ACCESS_LOG`` turns it on).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tarea.domain.records import TaskRecord

#: The request being served, for log lines written meanwhile.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tarea_request_id", default=None
)
#: The logger of task ends: one line per task that reached a terminal status.
task_ends = logging.getLogger("tarea.task_end")
#: What a LogRecord carries by itself; anything else on it came as ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """``ts``, ``level``, ``logger``, ``message``, ``request_id`` and the extras."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            line["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure(log_format: str, *, task_ends_on: bool | None = None) -> None:
    """Send logs to stderr as text or JSON lines; task ends on in JSON (or when asked)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    on = log_format == "json" if task_ends_on is None else task_ends_on
    task_ends.setLevel(logging.INFO if on else logging.WARNING)


def log_task_end(record: TaskRecord) -> None:
    """One line for a task that ended: who, what, how, and how long each step took."""
    if not task_ends.isEnabledFor(logging.INFO):
        return
    error = record.error or {}
    end_to_end = (
        (record.finished_at - record.created_at).total_seconds() * 1000
        if record.finished_at is not None
        else None
    )
    task_ends.info(
        "task %s %s",
        record.id,
        record.status.value,
        extra={
            "id": record.id,
            "tenant": record.tenant,
            "image": record.image,
            "function": record.function,
            "status": record.status.value,
            "code": error.get("code"),
            "attempt": record.attempt,
            "timings": {
                "queued_ms": record.queued_ms,
                "start_ms": record.start_ms,
                "run_ms": record.run_ms,
                "total_ms": end_to_end,
            },
            "worker": record.worker,
        },
    )


#: The longest X-Request-Id taken from a client.
MAX_REQUEST_ID = 128


def _acceptable(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID and all(0x21 <= byte <= 0x7E for byte in value)


class RequestId:
    """Take the request's ``X-Request-Id`` (or make one), echo it, and hold it for logs.

    A made id is this process's random prefix and a counter (in hex): unique
    across servers without a system call per request, which the warm path
    would feel.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = os.urandom(6).hex().encode()
        self._count = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = None
        for name, given in scope["headers"]:
            if name == b"x-request-id":
                value = given if _acceptable(given) else None
                break
        if value is None:
            value = b"%s%x" % (self._prefix, next(self._count))
        token = request_id.set(value.decode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", value)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
