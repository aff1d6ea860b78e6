"""Drift statistics (monitoring/drift.py) and reference bins (monitoring/drift_reference.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT
from scipy import stats

from monitoring.drift import (
    MIN_COUNT,
    DriftCounts,
    alpha_per_test,
    chi2_homogeneity,
    compare,
    count_values,
    critical_value,
    js_divergence,
    psi,
)
from monitoring.drift_reference import DriftReference, bins_for, build_reference, sampled_rows

sys.path.insert(0, str(ROOT / "bench"))
from drift_detection import (  # noqa: E402
    N_REFERENCE,
    detection_delay,
    false_alarms,
    reference_of,
    synthetic_population,
)


def test_numeric_bins_are_quantiles_with_open_ends_and_a_missing_bin():
    values = np.concatenate([np.arange(1000, dtype=np.float64), [np.nan] * 10])
    bins = bins_for("x", values)
    assert bins.kind == "numeric" and len(bins.edges) == 9 and len(bins.counts) == 11
    assert bins.counts[-1] == 10 and all(abs(c - 100) <= 1 for c in bins.counts[:-1])
    assert bins.bin_of(-1e9) == 0 and bins.bin_of(1e9) == 9 and bins.bin_of(float("nan")) == 10
    assert bins.labels[0].startswith("(-inf, ") and bins.labels[9].endswith("+inf)") and bins.labels[10] == "missing"


def test_few_distinct_values_are_categories_with_other_for_rare_and_unseen_values():
    values = np.array([0.0] * 60 + [1.0] * 30 + [2.0] * 6 + [3.0] * 4 + [np.nan])  # 3 is below 5%
    bins = bins_for("clicks", values)
    assert bins.kind == "categorical" and bins.labels == ["=0", "=1", "=2", "other", "missing"]
    assert bins.counts == [60, 30, 6, 4, 1]
    assert [bins.bin_of(v) for v in (0.0, 2.0, 3.0, 7.0, 0.5)] == [0, 2, 3, 3, 3]


def test_reference_uses_one_row_of_each_request_and_round_trips():
    features = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3])
    rows = sampled_rows(np.array([2, 0, 3]))
    assert len(rows) == 2 and 0 <= rows[0] < 2 and 2 <= rows[1] < 5
    assert (sampled_rows(np.full(1000, 4)) % 4).min() == 0 and (sampled_rows(np.full(1000, 4)) % 4).max() == 3
    reference = build_reference(["f"], features, scores, np.array([2, 3]))
    assert reference.names == ["f", "model_score"]
    assert DriftReference.from_json(reference.to_json()) == reference
    assert sum(reference.series[0].counts) == 2


def test_statistics_against_known_values():
    same = np.array([10, 20, 30, 40])
    assert psi(same, same) == pytest.approx(0) and js_divergence(same, same) == pytest.approx(0)
    assert js_divergence(np.array([5, 0]), np.array([0, 5])) == pytest.approx(1.0)  # disjoint: 1 bit
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert psi(p * 100, q * 100) == pytest.approx(np.sum((p - q) * np.log((p + 1e-4) / (q + 1e-4))))
    window, reference = np.array([30, 10, 5, 0]), np.array([100, 120, 90, 40])
    stat, df, p_value = chi2_homogeneity(window, reference)
    expected = stats.chi2_contingency(np.vstack([window, reference]), correction=False)
    assert stat == pytest.approx(expected.statistic) and df == expected.dof
    assert p_value == pytest.approx(expected.pvalue)
    assert critical_value([5, 5, 0, 5], 0.01) == pytest.approx(stats.chi2.isf(0.01, 2))


def test_alerts_need_the_minimum_count():
    reference = DriftReference([bins_for("x", np.arange(100.0))])
    tiny = count_values(reference, [[1e9]] * (MIN_COUNT - 1))  # every value far outside the reference
    assert not compare(reference, tiny, "5m")[0].drifting
    assert compare(reference, count_values(reference, [[1e9]] * MIN_COUNT), "5m")[0].drifting


def test_counts_are_bucketed_by_minute_and_windows_sum_them():
    now = [1_000_000.0]
    reference = DriftReference([bins_for("x", np.arange(100.0))])
    counts = DriftCounts(reference, clock=lambda: now[0])
    counts.add(counts.bins_of([5.0]))
    now[0] += 600  # ten minutes later: outside the 5-minute window, inside the hour
    counts.add(counts.bins_of([95.0]))
    counts.add(counts.bins_of([float("nan")]))
    assert counts.window(300)[0].sum() == 2 and counts.window(3600)[0].sum() == 3
    assert counts.window(300)[0][-1] == 1  # the missing bin
    report = counts.report()
    assert set(report) == {"5m", "1h", "1d"} and report["1h"][0].n == 3


def test_false_alarm_rate_and_detection_delay_on_synthetic_traffic():
    """The figures of docs/monitoring.md (bench/drift_detection.py, synthetic source, seed 0)."""
    rng = np.random.default_rng(0)
    values = synthetic_population(rng, N_REFERENCE)
    reference = reference_of(values, [f"f{j}" for j in range(values.shape[1])])
    alarms, windows = false_alarms(reference, lambda n: synthetic_population(rng, n), 600, rng)
    assert alarms / windows < 0.01, (alarms, windows)
    delays = [detection_delay(reference, lambda n: synthetic_population(rng, n), j, 0.5 * values[:, j].std())
              for j in range(values.shape[1])]
    found = [d for d in delays if d is not None]
    # Two Poisson counts with a mean below 0.3 have sigma < 1: rounded, their 0.5 sigma shift is no shift.
    assert len(found) >= 15 and np.median(found) <= 100 and max(found) <= 500, delays
    assert alpha_per_test(17) == pytest.approx(0.005 / 51)
