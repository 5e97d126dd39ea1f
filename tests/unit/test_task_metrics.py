"""Task histograms and failure counts, fed ended tasks (no server)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tarea.domain.records import TaskRecord, utcnow
from tarea.domain.status import Status
from tarea.metrics import OTHER, TaskMetrics
from tests.integration.conftest import task_record


def ended(image: str, status: Status = Status.SUCCEEDED, code: str | None = None) -> TaskRecord:
    created = utcnow()
    return task_record(
        image=image,
        status=status,
        created_at=created,
        finished_at=created + timedelta(seconds=0.3),
        queued_ms=100.0,
        start_ms=0.0,
        run_ms=200.0,
        error={"code": code, "message": "x", "data": {}} if code else None,
    )


class _Only(Collector):
    def __init__(self, metrics: TaskMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


def scrape(metrics: TaskMetrics) -> str:
    registry = CollectorRegistry()
    registry.register(_Only(metrics))
    return generate_latest(registry).decode()


def test_images_past_the_bound_are_counted_as_other() -> None:
    """The first max_images images keep their names; later ones (however many) are other."""
    metrics = TaskMetrics(max_images=2)
    for image in ("a:1", "b:1", "c:1", "d:1", "a:1"):
        metrics.observe(ended(image))
    text = scrape(metrics)
    assert 'tarea_task_run_seconds_count{image="a:1",status="succeeded"} 2.0' in text
    assert 'tarea_task_run_seconds_count{image="b:1",status="succeeded"} 1.0' in text
    assert f'tarea_task_run_seconds_count{{image="{OTHER}",status="succeeded"}} 2.0' in text
    assert "c:1" not in text
    assert "d:1" not in text


def test_each_timing_falls_in_its_bucket() -> None:
    """300 ms end to end is under 0.5 s and over 0.25 s; a 0 s start is in the first bucket."""
    metrics = TaskMetrics()
    metrics.observe(ended("a:1"))
    text = scrape(metrics)
    labels = 'image="a:1",le="{}",status="succeeded"'
    assert f"tarea_task_end_to_end_seconds_bucket{{{labels.format('0.25')}}} 0.0" in text
    assert f"tarea_task_end_to_end_seconds_bucket{{{labels.format('0.5')}}} 1.0" in text
    assert f"tarea_task_container_start_seconds_bucket{{{labels.format('0.001')}}} 1.0" in text
    assert 'tarea_task_queue_wait_seconds_sum{image="a:1",status="succeeded"} 0.1' in text


def test_failures_are_counted_by_code() -> None:
    """Tasks that did not succeed count under their error code; successes do not count."""
    metrics = TaskMetrics()
    metrics.observe(ended("a:1", Status.FAILED, "task_error"))
    metrics.observe(ended("a:1", Status.TIMED_OUT, "timed_out"))
    metrics.observe(ended("a:1", Status.FAILED, "task_error"))
    metrics.observe(ended("a:1"))
    assert dict(metrics.failures) == {"task_error": 2, "timed_out": 1}


def test_queue_wait_leaves_out_the_containers_start() -> None:
    """queued_ms runs until the call goes out; the queue wait is that minus the start."""
    metrics = TaskMetrics()
    metrics.observe(dataclasses.replace(ended("a:1"), queued_ms=100.0, start_ms=40.0))
    text = scrape(metrics)
    assert 'tarea_task_queue_wait_seconds_sum{image="a:1",status="succeeded"} 0.06' in text
    assert 'tarea_task_container_start_seconds_sum{image="a:1",status="succeeded"} 0.04' in text
