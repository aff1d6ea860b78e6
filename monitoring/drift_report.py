"""`recsys drift`: drift of a window of impression logs against the bundle's reference, and whether to retrain.

The window is the last ``window_s`` seconds of the log (its own ``ts`` clock); the baseline is
everything logged before it. Retraining is recommended only when both hold:

- drift: at least one series (a ranker feature or the score) drifts in the window, by the same
  sample-size-aware test as the live alerts (``monitoring/drift.py``);
- a quality drop: the window's CTR (clicks per shown item, from the feedback log) is more than
  ``tolerance`` (relative) below the baseline's, with at least ``min_items`` shown items on each
  side and a one-sided two-proportion z-test below 5%, so a noisy dip does not count.

Drift alone (the world moved but the model still earns its clicks) or a drop alone (a cause the
features do not show: retraining on the same inputs may not help) are reported, not acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from monitoring.drift import compare, count_values
from monitoring.drift_reference import DriftReference
from serving.event_log import IMPRESSIONS_FILE, load_logs, read_records

QUALITY_ALPHA = 0.05


@dataclass(frozen=True)
class CtrComparison:
    baseline_items: int
    baseline_clicks: float
    window_items: int
    window_clicks: float
    relative_drop: float | None
    p_value: float | None
    dropped: bool


@dataclass
class DriftDecision:
    window_s: float
    requests: int
    sampled: int
    drift: list[dict] = field(default_factory=list)
    drifting: list[str] = field(default_factory=list)
    ctr: CtrComparison | None = None
    retrain: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "ctr"}
        out["ctr"] = None if self.ctr is None else vars(self.ctr)
        return out

    def table(self) -> str:
        lines = [f"window: last {self.window_s:g} s of the log, {self.requests} requests, "
                 f"{self.sampled} with a ranker sample",
                 f"{'series':<26}{'n':>6}{'PSI':>8}{'JS':>8}{'chi2':>9}{'p-value':>10}  drifting"]
        for row in self.drift:
            lines.append(f"{row['series']:<26}{row['n']:>6}{row['psi']:>8.3f}{row['js']:>8.3f}{row['chi2']:>9.1f}"
                         f"{row['p_value']:>10.1e}  {'yes' if row['drifting'] else ''}")
        if self.ctr is not None:
            c = self.ctr
            lines.append(f"CTR: baseline {c.baseline_clicks:g}/{c.baseline_items}, window {c.window_clicks:g}/"
                         f"{c.window_items}")
        lines.append(("RETRAIN: " if self.retrain else "no retrain: ") + self.reason)
        return "\n".join(lines)


def compare_ctr(baseline: np.ndarray, window: np.ndarray, tolerance: float, min_items: int) -> CtrComparison:
    """Clicks (rewards > 0) per shown item before and in the window; dropped = beyond tolerance and significant."""
    nb, nw = len(baseline), len(window)
    cb, cw = float(np.sum(baseline > 0)), float(np.sum(window > 0))
    if nb == 0 or nw == 0 or cb == 0:
        return CtrComparison(nb, cb, nw, cw, None, None, False)
    pb, pw = cb / nb, cw / nw
    pooled = (cb + cw) / (nb + nw)
    se = math.sqrt(pooled * (1 - pooled) * (1 / nb + 1 / nw))
    p_value = float(stats.norm.sf((pb - pw) / se)) if se > 0 else 1.0
    drop = (pb - pw) / pb
    dropped = min(nb, nw) >= min_items and drop > tolerance and p_value < QUALITY_ALPHA
    return CtrComparison(nb, cb, nw, cw, drop, p_value, dropped)


def drift_decision(logs: Path, feedback: Path | None, reference: DriftReference, window_s: float,
                   tolerance: float, min_items: int) -> DriftDecision:
    impressions = logs / IMPRESSIONS_FILE if logs.is_dir() else logs
    records = list(read_records(impressions))
    if not records:
        raise ValueError(f"{impressions}: no impressions")
    start = max(float(r["ts"]) for r in records) - window_s
    in_window = [r for r in records if float(r["ts"]) >= start]
    samples = [r["ranker_sample"] for r in in_window if r.get("ranker_sample")]
    names = reference.names
    rows = [[s["features"].get(name, float("nan")) for name in names[:-1]] + [s["score"]] for s in samples]
    drift = compare(reference, count_values(reference, rows), f"{window_s:g}s")
    decision = DriftDecision(window_s, len(in_window), len(samples), [d.to_dict() for d in drift],
                             [d.series for d in drift if d.drifting])

    flat = load_logs(impressions, feedback).rows
    rewards, ts = flat["reward"].to_numpy(dtype=np.float64), flat["ts"].to_numpy(dtype=np.float64)
    decision.ctr = ctr = compare_ctr(rewards[ts < start], rewards[ts >= start], tolerance, min_items)

    if decision.drifting and ctr.dropped:
        decision.retrain = True
        decision.reason = (f"{', '.join(decision.drifting)} drifted and CTR fell {ctr.relative_drop:.1%} "
                           f"(> {tolerance:.0%}, one-sided p {ctr.p_value:.1e})")
    elif decision.drifting:
        decision.reason = (f"{', '.join(decision.drifting)} drifted, but CTR did not fall beyond {tolerance:.0%} "
                           f"with {min_items}+ shown items on each side ({_ctr_text(ctr)})")
    elif ctr.dropped:
        decision.reason = (f"CTR fell {ctr.relative_drop:.1%}, but no feature or score drifted: the inputs do not "
                           "explain the drop, so retraining on them may not help")
    else:
        decision.reason = f"no series drifted ({len(samples)} samples) and CTR did not fall ({_ctr_text(ctr)})"
    return decision


def _ctr_text(ctr: CtrComparison) -> str:
    if ctr.relative_drop is None:
        return f"baseline {ctr.baseline_items} items, window {ctr.window_items} items: no CTR to compare"
    return (f"baseline {ctr.baseline_clicks / ctr.baseline_items:.2%} of {ctr.baseline_items}, window "
            f"{ctr.window_clicks / ctr.window_items:.2%} of {ctr.window_items}")
