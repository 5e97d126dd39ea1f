"""Exceptions a task (or the runtime, on its behalf) raises to fail a call."""

from __future__ import annotations

import sys
import traceback
from typing import Any


class TaskError(Exception):
    """Raise from a task to fail the call with your own message.

    The caller receives JSON-RPC error -32000 with ``message`` as the error
    message and ``{"type": "TaskError", "message": message}`` merged with
    ``data`` as the error data (in HTTP mode: ``{"error": message}``).
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data) if data else {}


class ParamError(Exception):
    """The parameters of a call do not fit the task's signature (JSON-RPC -32602)."""

    def __init__(self, param: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason
        self.message = message

    @property
    def data(self) -> dict[str, Any]:
        """The JSON-RPC error data: which parameter, and why."""
        return {"param": self.param, "reason": self.reason}


def describe_failure(exc: Exception) -> tuple[str, dict[str, Any]]:
    """The message and data reporting an exception a task raised.

    A :class:`TaskError` keeps its own message and adds its data; any other
    exception reads ``"ZeroDivisionError: division by zero"``. The data
    always holds ``type`` (the class name) and ``message`` (``str(exc)``).
    """
    kind = type(exc).__name__
    if isinstance(exc, TaskError):
        return exc.message, {**exc.data, "type": kind, "message": exc.message}
    text = str(exc)
    return (f"{kind}: {text}" if text else kind), {"type": kind, "message": text}


def log_failure(task_name: str, exc: Exception) -> None:
    """Log a task's failure to stderr: one line for a TaskError, else the traceback."""
    if isinstance(exc, TaskError):
        print(f"tarea.runtime: {task_name!r} failed: {exc.message}", file=sys.stderr)
    else:
        print(f"tarea.runtime: {task_name!r} raised:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
