"""Prometheus metrics of the API: request latency and counts, per-stage latency, degraded answers.

Names follow Prometheus conventions: a ``recsys_`` namespace, base units in the name
(``_seconds``), ``_total`` for counters, and low-cardinality labels only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.request_duration = Histogram(
            "recsys_request_duration_seconds", "HTTP request latency by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.requests = Counter(
            "recsys_requests_total", "HTTP requests by endpoint and status code.",
            ["endpoint", "status"], registry=self.registry,
        )
        self.stage_duration = Histogram(
            "recsys_stage_duration_seconds", "Time spent in each /recommend stage.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.degraded = Counter(
            "recsys_degraded_responses_total", "Recommendations served with default features or fallbacks.",
            registry=self.registry,
        )
        self.recommended_items = Counter(
            "recsys_recommended_items_total", "Items recommended, by candidate source.",
            ["source"], registry=self.registry,
        )
        self.arm_recommendations = Counter(
            "recsys_arm_recommendations_total", "Recommendations served, by experiment arm.",
            ["arm"], registry=self.registry,
        )
        self.model_info = Gauge(
            "recsys_model_info", "The bundle being served (value 1).", ["version"], registry=self.registry,
        )

    def expose_counts(self, name: str, documentation: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        """A counter family whose values are read at scrape time from counts kept elsewhere.

        Serving components count their own events (they must not depend on monitoring); this
        exposes those counts without copying them on every request.
        """
        self.registry.register(_CountsCollector(name, documentation, label, read))

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_duration.labels(stage=stage).observe(ms / 1000)

    def set_model(self, version: str, previous: str | None = None) -> None:
        # Zero the old series instead of clear(): importing feast turns prometheus_client's
        # multiprocess mode on, where clear() is not implemented.
        if previous is not None:
            self.model_info.labels(version=previous).set(0)
        self.model_info.labels(version=version).set(1)


class _CountsCollector(Collector):
    def __init__(self, name: str, documentation: str, label: str, read: Callable[[], dict[str, float]]):
        self.name, self.documentation, self.label, self.read = name, documentation, label, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in self.read().items():
            family.add_metric([value], count)
        yield family
