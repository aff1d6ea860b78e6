"""Training/serving skew: were the features served online the ones training would have used?

Every impression record carries the raw feature values the request read from the online store.
For each logged (entity, time), this check recomputes the same features with the offline
point-in-time join, exactly as the training-set builder gets them, and compares value by value.
On clean traffic every value matches (the online store holds the snapshot the join picks at the
request time); a mismatch means the two paths disagree: a feature computed with another window
at serving, a stale or failed materialization, a bug in one path.

Only batch views are compared; the real-time ``rt_*`` features are updated online by design.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from feature_repo.definitions import (
    ITEM_ACTIVITY,
    ITEM_ATTRIBUTES,
    TIMESTAMP,
    USER_ACTIVITY,
    feature_names,
    feature_refs,
)
from feature_repo.store import historical

TOLERANCE = 1e-6  # relative; values pass through float32 in the online store


@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    compared: int
    mismatches: int
    max_abs_diff: float

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class SkewReport:
    impressions: int
    features: list[FeatureSkew]
    threshold: float

    @property
    def flagged(self) -> list[FeatureSkew]:
        return [f for f in self.features if f.mismatch_rate > self.threshold]

    def to_dict(self) -> dict:
        return {
            "impressions": self.impressions,
            "threshold": self.threshold,
            "flagged": [f.feature for f in self.flagged],
            "features": [{**asdict(f), "mismatch_rate": f.mismatch_rate} for f in self.features],
        }

    def table(self) -> str:
        lines = [f"{'feature':<22}{'compared':>10}{'mismatch':>10}{'rate':>9}{'max |diff|':>13}"]
        for f in self.features:
            mark = "  SKEW" if f in self.flagged else ""
            lines.append(f"{f.feature:<22}{f.compared:>10}{f.mismatches:>10}{f.mismatch_rate:>9.2%}"
                         f"{f.max_abs_diff:>13.4g}{mark}")
        return "\n".join(lines)


def served_features(impressions: Iterable[dict]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(user rows, item rows, impression count) of the logged served values, one row per entity per request."""
    users, items, count = [], [], 0
    for record in impressions:
        count += 1
        when = pd.Timestamp(record["ts"], unit="s", tz="UTC")
        served = record.get("features", {})
        if served.get("user"):
            users.append({"user_id": record["user_id"], TIMESTAMP: when, **served["user"]})
        for item_id, values in (served.get("items") or {}).items():
            items.append({"item_id": item_id, TIMESTAMP: when, **values})
    return pd.DataFrame(users), pd.DataFrame(items), count


def _values_differ(served: object, offline: object) -> tuple[bool, float]:
    """(mismatch, absolute difference) for scalars or arrays; a null on one side only is a mismatch."""
    served_missing = served is None or (np.isscalar(served) and pd.isna(served))
    offline_missing = offline is None or (np.isscalar(offline) and pd.isna(offline))
    if served_missing or offline_missing:
        return served_missing != offline_missing, 0.0
    a, b = np.asarray(served, dtype=np.float64), np.asarray(offline, dtype=np.float64)
    if a.shape != b.shape:
        return True, float("inf")
    diff = float(np.max(np.abs(a - b), initial=0.0))
    scale = float(np.max(np.abs(b), initial=0.0))
    return diff > TOLERANCE * max(1.0, scale), diff


def compare(served: pd.DataFrame, offline: pd.DataFrame, features: list[str]) -> list[FeatureSkew]:
    result = []
    for feature in features:
        if feature not in served.columns:
            continue
        outcomes = [_values_differ(s, o) for s, o in zip(served[feature], offline[feature], strict=True)]
        result.append(FeatureSkew(
            feature=feature,
            compared=len(outcomes),
            mismatches=sum(bad for bad, _ in outcomes),
            max_abs_diff=max((d for _, d in outcomes), default=0.0),
        ))
    return result


def check_skew(store: FeatureStore, impressions: Iterable[dict], threshold: float = 0.0) -> SkewReport:
    """Compare logged served values with the point-in-time join at each request's time."""
    users, items, count = served_features(impressions)
    skews = []
    if len(users):
        user_features = feature_names(USER_ACTIVITY)
        offline = historical(store, users[["user_id", TIMESTAMP]], feature_refs(USER_ACTIVITY))
        skews += compare(users, offline, user_features)
    if len(items):
        item_features = feature_names(ITEM_ACTIVITY) + feature_names(ITEM_ATTRIBUTES)
        offline = historical(store, items[["item_id", TIMESTAMP]], feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES))
        skews += compare(items, offline, item_features)
    return SkewReport(impressions=count, features=skews, threshold=threshold)


def write_prometheus(report: SkewReport, path: Path) -> None:
    """The report as gauges in Prometheus' text format (for node_exporter's textfile collector)."""
    registry = CollectorRegistry()
    rate = Gauge("recsys_feature_skew_mismatch_ratio", "Share of served values that differ from the offline join.",
                 ["feature"], registry=registry)
    diff = Gauge("recsys_feature_skew_max_abs_diff", "Largest served-vs-offline difference per feature.",
                 ["feature"], registry=registry)
    for f in report.features:
        rate.labels(feature=f.feature).set(f.mismatch_rate)
        diff.labels(feature=f.feature).set(f.max_abs_diff)
    write_to_textfile(str(path), registry)
