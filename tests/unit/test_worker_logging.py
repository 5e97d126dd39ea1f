"""A worker's Celery lines per message and per task follow ``TAREA_ACCESS_LOG``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery import Celery, states
from celery.app.task import Context
from celery.app.trace import TraceInfo
from celery.exceptions import Reject

from tarea.distributed.worker import (
    CELERY_PER_TASK_LOGGERS,
    Requeue,
    quiet_celery_per_task_lines,
)
from tarea.settings import Settings


@pytest.fixture(autouse=True)
def _levels_put_back() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in (*CELERY_PER_TASK_LOGGERS, "")]
    levels = [logger.level for logger in loggers]
    logging.getLogger().setLevel(logging.INFO)  # as the worker's basicConfig sets it
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_off_by_default_their_warnings_and_errors_kept() -> None:
    """Celery asks ``isEnabledFor(INFO)`` of these loggers when the worker starts."""
    quiet_celery_per_task_lines(Settings(access_log=False))
    for name in CELERY_PER_TASK_LOGGERS:
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO), name
        assert logger.isEnabledFor(logging.WARNING), name


def test_on_with_the_access_log() -> None:
    quiet_celery_per_task_lines(Settings(access_log=False))
    quiet_celery_per_task_lines(Settings(access_log=True))
    for name in CELERY_PER_TASK_LOGGERS:
        assert logging.getLogger(name).isEnabledFor(logging.INFO), name


def _noop() -> None:
    """The task whose rejection is logged."""


def test_celerys_warning_for_a_message_the_worker_sent_back_itself_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through Celery's own logging of a rejected task: a Reject raised from the worker's
    Requeue (it drains, or the store is away; the worker logs that itself, in one line)
    leaves no warning and no traceback; any other Reject keeps Celery's warning."""
    quiet_celery_per_task_lines(Settings(access_log=False))
    app = Celery("tarea-test", set_as_current=False)
    app.task(name="tarea.test")(_noop)
    app.finalize()
    task = app.tasks["tarea.test"]
    request = Context({"id": "m", "hostname": "w", "args": (), "kwargs": {}})
    for cause, warned in (
        (Requeue("this worker is shutting down"), False),
        (ValueError("x"), True),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="celery.app.trace"):
            try:
                try:
                    raise cause
                except Exception as exc:
                    raise Reject(str(exc), requeue=True) from exc
            except Reject as exc:
                TraceInfo(states.REJECTED, exc).handle_reject(task, request)
        lines = [r.getMessage() for r in caplog.records if r.name == "celery.app.trace"]
        assert bool([line for line in lines if "reject requeue=True" in line]) is warned, lines
