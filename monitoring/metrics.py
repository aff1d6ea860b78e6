"""Prometheus metrics of the API: request latency and counts, per-stage latency, degraded answers,
drift counts per feature and bin, feedback and exploration.

Names follow Prometheus conventions: a ``recsys_`` namespace, base units in the name
(``_seconds``), ``_total`` for counters, and low-cardinality labels only (``feature`` x ``bin`` is
about 17 x 12 series, fixed by the bundle's reference).

Several worker processes: ``recsys serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a private folder
before prometheus_client is imported, so every value lives in a file there and a scrape of any worker
reports the sum over all of them (gauges: the maximum). Counts kept by serving components
(:meth:`ApiMetrics.expose_counts`) are copied into real counters as deltas, so they add up too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from monitoring.drift import alpha_per_test, critical_value
from monitoring.drift_reference import DriftReference

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess_dir() -> str | None:
    """The folder metric values live in when prometheus_client runs in multiprocess mode, else None.

    The mode is fixed when prometheus_client is first imported (by this project or by Feast, which
    switches it on for its own metrics), so it is read from the library, not from the environment.
    """
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._synced: list[tuple[Counter, Callable[[], dict[str, float]], dict[str, float]]] = []
        self._sync_lock = threading.Lock()
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
            multiprocess_mode="max",
        )
        self.drift_observations = Counter(
            "recsys_drift_observations", "Served values (one sampled candidate's ranker inputs and score per "
            "request) by reference bin.", ["feature", "bin"], registry=self.registry,
        )
        self.drift_reference = Gauge(
            "recsys_drift_reference_observations", "The bundle's drift reference: training-time count per bin.",
            ["feature", "bin"], registry=self.registry, multiprocess_mode="max",
        )
        self.drift_critical = Gauge(
            "recsys_drift_chi2_critical", "Chi-square statistic above which a window of a feature drifts "
            "(the Bonferroni-split false-alarm budget, for the reference's bins).", ["feature"],
            registry=self.registry, multiprocess_mode="max",
        )
        self.feedback_events = Counter(
            "recsys_feedback_events", "Feedback events received, by event.", ["event"], registry=self.registry,
        )
        self.explored_items = Counter(
            "recsys_explored_items", "Recommended items the policy placed at random (propensity below 1).",
            registry=self.registry,
        )
        self.features_materialized = Gauge(
            "recsys_features_materialized_timestamp_seconds", "When the online store was last materialized.",
            registry=self.registry, multiprocess_mode="max",
        )

    def expose_counts(self, name: str, documentation: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        """A counter family mirroring counts kept elsewhere, copied at :meth:`sync_counts`.

        Serving components count their own events (they must not depend on monitoring); copying
        the increase since the last copy (not the value) keeps the sum over worker processes right.
        """
        self._synced.append((Counter(name, documentation, [label], registry=self.registry), read, {}))

    def sync_counts(self) -> None:
        """Copy what the exposed counts gained since the last call (after each request and at scrape)."""
        with self._sync_lock:
            for counter, read, last in self._synced:
                for value, count in read().items():
                    gained = count - last.get(value, 0)
                    if gained > 0 or value not in last:
                        counter.labels(value).inc(max(gained, 0))
                        last[value] = count

    def exposition(self) -> bytes:
        """The text format of every metric, summed over worker processes in multiprocess mode."""
        self.sync_counts()
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)

    def set_drift_reference(self, reference: DriftReference, previous: DriftReference | None = None) -> list[list]:
        """Publish a bundle's reference and critical values; returns the observation counters per series
        and bin, created at 0 so that every bin has a series from the first scrape on."""
        for series in previous.series if previous else []:  # zeroed, not removed: no clear() in multiprocess mode
            for label in series.labels:
                self.drift_reference.labels(series.name, label).set(0)
        alpha = alpha_per_test(len(reference.series))
        children = []
        for series in reference.series:
            self.drift_critical.labels(series.name).set(critical_value(series.counts, alpha))
            for label, count in zip(series.labels, series.counts, strict=True):
                self.drift_reference.labels(series.name, label).set(count)
            children.append([self.drift_observations.labels(series.name, label) for label in series.labels])
        return children

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_duration.labels(stage=stage).observe(ms / 1000)

    def set_model(self, version: str, previous: str | None = None) -> None:
        # Zero the old series instead of clear(): importing feast turns prometheus_client's
        # multiprocess mode on, where clear() is not implemented.
        if previous is not None:
            self.model_info.labels(version=previous).set(0)
        self.model_info.labels(version=version).set(1)
