"""``progress()``: let a running task report how far along it is."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Reporter = Callable[[float, "str | None"], None]

_reporter: ContextVar[Reporter | None] = ContextVar("tarea_progress_reporter", default=None)


def progress(fraction: float, message: str | None = None) -> None:
    """Report progress of the running call: ``fraction`` from 0 to 1 (clamped).

    In JSON-RPC mode this sends a ``progress`` notification carrying the
    request id; outside a task (or in HTTP mode) it does nothing. Call it
    from the task's own thread (threads you start do not inherit the call).
    """
    value = float(fraction)
    if math.isnan(value):
        raise ValueError("progress fraction must be a number from 0 to 1, got NaN")
    reporter = _reporter.get()
    if reporter is not None:
        reporter(round(min(1.0, max(0.0, value)), 4), None if message is None else str(message))


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Route ``progress()`` calls made inside the block to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
