"""Prometheus metrics, collected at scrape time from the live objects.

Nothing on a task's path touches a metric object: the collector reads the
pool's and the runner's counters when ``/metrics`` is scraped. Each app has
its own registry (no global state), so several apps can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tarea.service import TaskService


class TareaCollector(Collector):
    """Pool sizes and counters, queue depth and task outcomes of one server."""

    def __init__(self, service: TaskService) -> None:
        self.service = service

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


def build_registry(service: TaskService) -> CollectorRegistry:
    """A registry holding this server's metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TareaCollector(service))
    return registry
