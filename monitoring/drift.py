"""Drift of served values against the bundle's frozen reference: counts, statistics, alert decision.

Served values are counted into the reference bins (``monitoring/drift_reference.py``) per one-minute
bucket; a window (5 min, 1 h, 1 day) is the sum of its buckets, so counting is additive and cheap,
and the same counts can be kept by Prometheus counters (the recording rules in
``infra/prometheus/rules/drift.yml`` compute the same statistics across worker processes).

Per series and window:

- PSI = sum_b (p_b - q_b) ln((p_b + eps) / (q_b + eps)), with eps = 1e-4 so an empty bin on either
  side gives a large but finite term instead of infinity;
- Jensen-Shannon divergence, base 2 (0 = same distribution, 1 = disjoint supports);
- the chi-square test of homogeneity of the window's counts and the reference's counts (a 2 x B
  table; the reference is a sample too, so its noise is accounted for):
  chi2 = sum_b (R n_b - N r_b)^2 / (N R (n_b + r_b)) over bins with n_b + r_b > 0, df = bins - 1.

Why not PSI > 0.1/0.2: with no drift at all, the PSI of a 100-request window over 10 bins is about
(bins - 1)/N on average, so fixed thresholds alarm on small windows and miss drift on large ones.
A series drifts when its window has at least ``MIN_COUNT`` requests and its p-value is below
``FAMILY_ALPHA`` split (Bonferroni) over every series and window monitored: that bounds the chance
that a stationary window raises any alert, whatever its size. PSI and JS are reported for people.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from monitoring.drift_reference import DriftReference

EPSILON = 1e-4
WINDOWS = {"5m": 300, "1h": 3600, "1d": 86400}
MIN_COUNT = 50
FAMILY_ALPHA = 0.005
BUCKET_S = 60


def psi(counts: np.ndarray, reference: np.ndarray, eps: float = EPSILON) -> float:
    """Population stability index of the window's shares against the reference's."""
    p, q = _shares(counts), _shares(reference)
    return float(np.sum((p - q) * np.log((p + eps) / (q + eps))))


def js_divergence(counts: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits."""
    p, q = _shares(counts), _shares(reference)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return float(np.sum(terms) / 2)


def chi2_homogeneity(counts: np.ndarray, reference: np.ndarray) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of "window and reference come from one distribution"."""
    n, r = np.asarray(counts, np.float64), np.asarray(reference, np.float64)
    big_n, big_r = n.sum(), r.sum()
    used = (n + r) > 0
    df = int(used.sum()) - 1
    if big_n == 0 or big_r == 0 or df < 1:
        return 0.0, max(df, 0), 1.0
    stat = float(np.sum((big_r * n[used] - big_n * r[used]) ** 2 / (big_n * big_r * (n[used] + r[used]))))
    return stat, df, float(stats.chi2.sf(stat, df))


def alpha_per_test(n_series: int, n_windows: int = len(WINDOWS)) -> float:
    """The family-wise false-alarm budget split over every (series, window) test."""
    return FAMILY_ALPHA / (n_series * n_windows)


def critical_value(reference_counts: list[int], alpha: float) -> float:
    """The chi-square statistic above which a window drifts, for the reference's non-empty bins
    (exported to Prometheus, which cannot compute a p-value itself)."""
    df = max(sum(1 for c in reference_counts if c > 0) - 1, 1)
    return float(stats.chi2.isf(alpha, df))


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


@dataclass(frozen=True)
class SeriesDrift:
    series: str
    window: str
    n: int
    psi: float
    js: float
    chi2: float
    df: int
    p_value: float
    drifting: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(reference: DriftReference, counts: list[np.ndarray], window: str) -> list[SeriesDrift]:
    """Statistics and the alert decision for each series' window counts."""
    alpha = alpha_per_test(len(reference.series))
    out = []
    for bins, observed in zip(reference.series, counts, strict=True):
        ref = np.asarray(bins.counts)
        stat, df, p_value = chi2_homogeneity(observed, ref)
        n = int(np.sum(observed))
        out.append(SeriesDrift(bins.name, window, n, psi(observed, ref), js_divergence(observed, ref), stat, df,
                               p_value, n >= MIN_COUNT and p_value < alpha))
    return out


def count_values(reference: DriftReference, rows: list[list[float]]) -> list[np.ndarray]:
    """Bin counts per series of value rows (series order): the offline path, from logs."""
    counts = [np.zeros(len(s.counts), np.int64) for s in reference.series]
    for row in rows:
        for j, (bins, value) in enumerate(zip(reference.series, row, strict=True)):
            counts[j][bins.bin_of(value)] += 1
    return counts


class DriftCounts:
    """Served values counted into the reference bins per one-minute bucket, thread-safe; a day kept."""

    def __init__(self, reference: DriftReference, clock: Callable[[], float] = time.time):
        self.reference = reference
        self.clock = clock
        self._width = max(len(s.counts) for s in reference.series)
        self._buckets: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._rows = np.arange(len(reference.series))

    def bins_of(self, values: list[float]) -> list[int]:
        return [bins.bin_of(v) for bins, v in zip(self.reference.series, values, strict=True)]

    def add(self, bins: list[int]) -> None:
        """Count one request's values, given their bin indexes (series order)."""
        minute = int(self.clock() // BUCKET_S)
        with self._lock:
            bucket = self._buckets.get(minute)
            if bucket is None:
                bucket = self._buckets[minute] = np.zeros((len(self._rows), self._width), np.int64)
                oldest = minute - max(WINDOWS.values()) // BUCKET_S
                for old in [m for m in self._buckets if m <= oldest]:
                    del self._buckets[old]
            bucket[self._rows, bins] += 1

    def window(self, seconds: int) -> list[np.ndarray]:
        """Counts of the last ``seconds`` (whole buckets, the current one included), per series."""
        first = int(self.clock() // BUCKET_S) - seconds // BUCKET_S + 1
        with self._lock:
            total = sum((b for m, b in self._buckets.items() if m >= first),
                        np.zeros((len(self._rows), self._width), np.int64))
        return [total[j, :len(s.counts)] for j, s in enumerate(self.reference.series)]

    def report(self) -> dict[str, list[SeriesDrift]]:
        return {name: compare(self.reference, self.window(seconds), name) for name, seconds in WINDOWS.items()}
