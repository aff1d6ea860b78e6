"""`GET /dashboard`: drift and latency for people without Grafana, served whole by the app (no CDN).

The page (``services/dashboard_assets``) polls ``/dashboard/data``: drift per series and window from
this process's counts (``monitoring/drift.py``; with several workers, the worker that answers), and
latency per stage from the Prometheus histograms, which cover every worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from prometheus_client.parser import text_string_to_metric_families

from monitoring.drift import WINDOWS

ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
QUANTILES = (0.5, 0.9, 0.99)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile of a cumulative histogram ((upper bound, count) sorted), interpolated within its bucket
    as PromQL's histogram_quantile does; None without observations."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def stage_latency(exposition: bytes) -> list[dict]:
    """Count and p50/p90/p99 (ms) per /recommend stage, from the metrics' text exposition."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name != "recsys_stage_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["stage"], []).append((float(sample.labels["le"]), sample.value))
    out = []
    for stage, points in sorted(buckets.items()):
        points.sort()
        row = {"stage": stage, "count": int(points[-1][1])}
        for q in QUANTILES:
            value = bucket_quantile(points, q)
            row[f"p{round(q * 100)}_ms"] = None if value is None else round(value * 1000, 3)
        out.append(row)
    return out


def dashboard_data(runtime) -> dict:
    drift = runtime.drift
    series = []
    if drift is not None:
        report = drift.counts.report()
        for j, name in enumerate(drift.counts.reference.names):
            series.append({"series": name, "windows": {w: report[w][j].to_dict() for w in WINDOWS}})
    return {
        "model_version": runtime.recommender.model.version,
        "process": os.getpid(),
        "windows": list(WINDOWS),
        "drift": series,
        "drifting": sorted({s["series"] for s in series if any(v["drifting"] for v in s["windows"].values())}),
        "latency": stage_latency(runtime.metrics.exposition()),
    }


def add_routes(app: FastAPI, get_runtime: Callable[[Request], object]) -> None:
    @app.get("/dashboard", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(ASSETS / "index.html", media_type=MEDIA_TYPES[".html"])

    @app.get("/dashboard/assets/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        path = ASSETS / name
        if path.suffix not in MEDIA_TYPES or path.parent != ASSETS or not path.is_file():
            raise HTTPException(status_code=404, detail="no such asset")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    @app.get("/dashboard/data")
    def data(runtime=Depends(get_runtime)) -> dict:
        """Drift per series and window (this process) and latency per stage (all processes)."""
        return dashboard_data(runtime)
