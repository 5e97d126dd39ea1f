"""A worker's Celery lines per message and per task follow ``TAREA_ACCESS_LOG``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tarea.distributed.worker import CELERY_PER_TASK_LOGGERS, quiet_celery_per_task_lines
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
