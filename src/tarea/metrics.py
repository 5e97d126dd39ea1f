"""Prometheus metrics, collected at scrape time from the live objects.

Nothing on a task's path touches a prometheus_client object: the collector
reads the pool's and the runner's counters when ``/metrics`` is scraped, and
:class:`TaskMetrics` keeps the task histograms as plain counts (a task end adds
to a few lists) that the collector renders. Each app has its own registry (no
global state), so several apps can live in one process.

The histograms (queue wait, container start, run, end to end) are labelled
by status and image. Images are bounded: the first ``max_images`` seen keep
their name, later ones are counted as ``other``, so a tenant sending a new
image per task cannot grow the scrape without bound.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tarea.domain.records import TaskRecord
from tarea.service import TaskService

#: Upper bounds of the histograms' buckets, in seconds.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
             60.0, 300.0)  # fmt: skip
#: The histograms: name, help, and which of a task's timings each observes.
HISTOGRAMS = {
    "queue_wait": "Time from submit until a container was sought for the task, seconds.",
    "container_start": "Time to get the task a ready container (0 when warm), seconds.",
    "run": "Time the task's function ran, seconds.",
    "end_to_end": "Time from submit to the recorded end, seconds.",
}
OTHER = "other"


class _Histogram:
    """Bucket counts and a sum, as Prometheus wants them."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip([*map(str, BUCKETS_S), "+Inf"], self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


class TaskMetrics:
    """Task histograms and failures by code, fed one ended task at a time.

    Args:
        max_images: images labelled by name; the rest are ``other``.
    """

    def __init__(self, max_images: int = 20) -> None:
        self.max_images = max_images
        self._images: set[str] = set()
        self._histograms: dict[tuple[str, str, str], _Histogram] = {}
        #: Failed, timed-out and cancelled tasks, by their error code.
        self.failures: Counter[str] = Counter()

    def _image(self, image: str) -> str:
        if image in self._images:
            return image
        if len(self._images) < self.max_images:
            self._images.add(image)
            return image
        return OTHER

    def observe(self, record: TaskRecord) -> None:
        """Count the ended task ``record``."""
        status = record.status.value
        image = self._image(record.image)
        if record.finished_at is not None:
            total = (record.finished_at - record.created_at).total_seconds()
            self._add("end_to_end", status, image, total)
        # queued_ms runs until the call goes out, the container's start included.
        wait = None
        if record.queued_ms is not None:
            wait = max(0.0, record.queued_ms - (record.start_ms or 0.0))
        for name, value in (
            ("queue_wait", wait),
            ("container_start", record.start_ms),
            ("run", record.run_ms),
        ):
            if value is not None:
                self._add(name, status, image, value / 1000)
        if status != "succeeded":
            self.failures[(record.error or {}).get("code") or status] += 1

    def _add(self, name: str, status: str, image: str, seconds: float) -> None:
        key = (name, status, image)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = _Histogram()
        histogram.observe(max(0.0, seconds))

    def collect(self) -> Iterator[Metric]:
        """The histograms and the failure counter, as metric families."""
        for name, doc in HISTOGRAMS.items():
            family = HistogramMetricFamily(
                f"tarea_task_{name}_seconds", doc, labels=["status", "image"]
            )
            for (kind, status, image), histogram in sorted(self._histograms.items()):
                if kind == name:
                    family.add_metric([status, image], histogram.buckets(), histogram.total)
            yield family
        failures = CounterMetricFamily(
            "tarea_task_failures", "Tasks that did not succeed, by error code.", labels=["code"]
        )
        for code, count in sorted(self.failures.items()):
            failures.add_metric([code], count)
        yield failures


class TareaCollector(Collector):
    """Pool sizes and counters, queue depth and task outcomes of one server."""

    def __init__(self, service: TaskService, tasks: TaskMetrics | None = None) -> None:
        self.service = service
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        stats = self.service.pools()
        counters = stats["counters"]
        pool_events = CounterMetricFamily(
            "tarea_pool_events",
            "Warm pool events: hits, misses, starts, evictions.",
            labels=["event"],
        )
        for name, value in counters.items():
            pool_events.add_metric([name], value)
        yield pool_events
        sizes = GaugeMetricFamily(
            "tarea_pool_containers",
            "Pooled task containers by image and state.",
            labels=["image", "state"],
        )
        for pool in stats["pools"]:
            for state in ("idle", "busy", "stem_cells"):
                sizes.add_metric([pool["image"], state], pool[state])
        yield sizes
        yield GaugeMetricFamily(
            "tarea_pool_total", "Task containers held by the pool.", value=stats["total"]
        )
        dispatcher = self.service.dispatcher
        yield GaugeMetricFamily(
            "tarea_tasks_queued", "Tasks waiting for a worker.", value=dispatcher.queued
        )
        yield GaugeMetricFamily(
            "tarea_tasks_running", "Tasks running now.", value=dispatcher.running
        )
        finished = CounterMetricFamily(
            "tarea_tasks_finished", "Tasks that reached a terminal status.", labels=["status"]
        )
        for status, value in sorted(self.service.dispatcher.end_counts().items()):
            finished.add_metric([status], value)
        yield finished
        if self.tasks is not None:
            yield from self.tasks.collect()


def build_registry(service: TaskService, tasks: TaskMetrics | None = None) -> CollectorRegistry:
    """A registry holding this server's metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TareaCollector(service, tasks))
    return registry
