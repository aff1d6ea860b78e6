"""Reference bins for drift, frozen at training time and shipped in the bundle.

Drift is measured on what the ranker saw: one candidate's ranker features and score per request,
picked uniformly at random (``Recommendation.drift_sample``; the impression log records the same
row, so ``recsys drift`` counts the same thing offline). One row per request, not all ~300
candidates, keeps the counted values close to independent, which the chi-square test of
``monitoring/drift.py`` assumes (a request's candidates share its user's features). The reference
is one candidate (fixed seed) per request of every user the model knows, ranked as of the instant
serving starts (``training.pipeline.serving_sample``): the same population, features and clock as
the traffic right after deployment, so a stationary world does not look drifted.

Bins per series (each ranker feature, and ``model_score``):

- numeric: the reference's deciles as inner edges (duplicates merged), with open outer bins, so a
  served value outside the training range still lands in a bin; bins are right-closed;
- categorical (a series with at most ``TOP_K`` distinct reference values, e.g. a mostly-zero
  integer count): one bin per value holding at least ``MIN_CATEGORY_SHARE`` of the reference, and
  ``other`` for the rest, including values never seen in training;
- and a ``missing`` bin (NaN) for both.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.bundle import DRIFT_REFERENCE
from training.ranker_features import RANKER_FEATURES

N_QUANTILE_BINS = 10
TOP_K = 10
# A category needs this share of the reference; rarer values count as "other", so that no bin the
# test relies on has a handful of reference values (a chi-square cell with a tiny expected count
# turns one served value into a false alarm).
MIN_CATEGORY_SHARE = 0.05
SCORE = "model_score"
MISSING = "missing"
OTHER = "other"


@dataclass(frozen=True)
class SeriesBins:
    """How one series' values are binned, with the reference's count per bin (labels order)."""

    name: str
    kind: str  # "numeric" or "categorical"
    edges: list[float]  # numeric: inner right-closed edges; categorical: the values, sorted
    counts: list[int]

    @property
    def labels(self) -> list[str]:
        if self.kind == "categorical":
            return [f"={_fmt(v)}" for v in self.edges] + [OTHER, MISSING]
        bounds = ["-inf", *map(_fmt, self.edges), "+inf"]
        return [f"({lo}, {hi}]" if hi != "+inf" else f"({lo}, +inf)" for lo, hi in zip(bounds, bounds[1:],
                                                                                        strict=False)] + [MISSING]

    def bin_of(self, value: float) -> int:
        """The bin index of one value (cheap: a bisection, no arrays; called per served request)."""
        if value != value:  # NaN
            return len(self.counts) - 1
        if self.kind == "numeric":
            return bisect.bisect_left(self.edges, value)
        i = bisect.bisect_left(self.edges, value)
        return i if i < len(self.edges) and self.edges[i] == value else len(self.edges)


@dataclass(frozen=True)
class DriftReference:
    series: list[SeriesBins]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.series]

    def to_json(self) -> str:
        return json.dumps({"series": [asdict(s) for s in self.series]})

    @classmethod
    def from_json(cls, text: str) -> DriftReference:
        return cls([SeriesBins(**s) for s in json.loads(text)["series"]])

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        return cls.from_json(path.read_text())


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def bins_for(name: str, values: np.ndarray) -> SeriesBins:
    """Bins for one series from its reference values (NaN = missing)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    distinct, counts = np.unique(present, return_counts=True)
    if len(distinct) <= TOP_K:
        common = distinct[counts >= MIN_CATEGORY_SHARE * len(present)]
        bins = SeriesBins(name, "categorical", common.tolist(), [0] * (len(common) + 2))
    else:
        quantiles = np.quantile(present, np.linspace(0, 1, N_QUANTILE_BINS + 1)[1:-1], method="lower")
        edges = np.unique(quantiles)
        bins = SeriesBins(name, "numeric", edges.tolist(), [0] * (len(edges) + 2))
    counts = np.bincount([bins.bin_of(v) for v in values.tolist()], minlength=len(bins.counts))
    return SeriesBins(bins.name, bins.kind, bins.edges, counts.tolist())


def sampled_rows(group_sizes: np.ndarray, seed: int = 0) -> np.ndarray:
    """One row index per request (requests = consecutive groups of rows), uniform within it."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    offsets = np.random.default_rng(seed).integers(0, np.maximum(sizes, 1))
    return (starts + offsets)[sizes > 0]


def build_reference(feature_names: list[str], features: np.ndarray, scores: np.ndarray,
                    group_sizes: np.ndarray) -> DriftReference:
    """Reference bins from ranker inputs and scores of a set of requests (one sampled row per request)."""
    rows = sampled_rows(group_sizes)
    if len(rows) == 0:
        raise ValueError("drift reference: the evaluation has no requests")
    series = [bins_for(name, features[rows, j]) for j, name in enumerate(feature_names)]
    series.append(bins_for(SCORE, scores[rows]))
    return DriftReference(series)


def write_reference(staging: Path, features: np.ndarray, scores: np.ndarray, group_sizes: np.ndarray) -> None:
    """The ``extra_artifacts`` hook of ``training.pipeline.train_bundle``: the bundle's drift reference."""
    reference = build_reference(list(RANKER_FEATURES), features, scores, group_sizes)
    (staging / DRIFT_REFERENCE).write_text(reference.to_json())
