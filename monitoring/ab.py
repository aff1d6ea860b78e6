"""A/B test analysis from the impression and feedback logs: per-arm metrics, lifts, SRM and power.

Every impression carries its ``arm`` (``serving/experiments.py``); rewards are joined as for
off-policy evaluation (``serving.event_log.load_logs``: a click within the attribution window).

Metrics, per arm: **CTR** (clicks / impressions) and **clicks per request**. Users are the unit of
randomisation and one user's requests are correlated, so both are ratio metrics over users and
their standard errors come from the delta method on per-user totals (a user-clustered SE)::

    R = sum c_u / sum n_u,   se(R)^2 = sum (c_u - R n_u)^2 / (U (U - 1) nbar^2)

Lift of an arm against the control: absolute ``R_t - R_c`` (se ``sqrt(se_t^2 + se_c^2)``, normal
95% interval and two-sided p-value) and relative ``R_t / R_c - 1`` (delta method).

Sample-ratio mismatch (SRM): a chi-square test of the users per arm against the configured shares;
``p < 0.001`` means the assignment or the logging is broken and the lifts must not be trusted.

Power: the minimum detectable effect (MDE) at the current sample sizes, ``(z_{1-alpha/2} + z_power)
* se(diff)``, and, for a target relative MDE, the users each arm needs (``se`` scales as
``1/sqrt(users)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from serving.event_log import DEFAULT_EVENTS, DEFAULT_WINDOW_S, IMPRESSIONS_FILE, load_logs, read_records

NO_ARM = "none"
SRM_ALPHA = 0.001
METRICS = ("ctr", "clicks_per_request")


def per_user_totals(logs: Path, feedback: Path | None = None, window_s: float = DEFAULT_WINDOW_S,
                    events: Iterable[str] = DEFAULT_EVENTS) -> pd.DataFrame:
    """One row per (arm, user): ``requests``, ``impressions``, ``clicks``."""
    path = logs / IMPRESSIONS_FILE if logs.is_dir() else logs
    flat = load_logs(path, feedback, window_s, events)
    arms = pd.DataFrame([(str(r["request_id"]), str(r.get("arm") or NO_ARM), str(r["user_id"]))
                         for r in read_records(path)], columns=["request_id", "arm", "user_id"])
    per_request = flat.rows.groupby("request_id").agg(impressions=("item_id", "size"), clicks=("reward", "sum"))
    requests = arms.join(per_request, on="request_id").fillna({"impressions": 0, "clicks": 0.0})
    totals = requests.groupby(["arm", "user_id"]).agg(requests=("request_id", "size"),
                                                      impressions=("impressions", "sum"), clicks=("clicks", "sum"))
    return totals.reset_index()


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """``sum num / sum den`` and its delta-method (cluster) standard error, one element per user."""
    total = denominator.sum()
    if total <= 0:
        return math.nan, math.nan
    value = numerator.sum() / total
    users = len(numerator)
    if users < 2:
        return float(value), math.nan
    mean_den = total / users
    residual = numerator - value * denominator
    return float(value), float(math.sqrt((residual**2).sum() / (users * (users - 1)) / mean_den**2))


def srm_check(observed: dict[str, int], shares: dict[str, float]) -> dict:
    """Chi-square test of observed users per arm against the expected shares."""
    names = list(shares)
    counts = np.array([observed.get(name, 0) for name in names], dtype=np.float64)
    unexpected = sorted(set(observed) - set(names))
    total = counts.sum()
    expected = np.array([shares[name] for name in names]) * total
    if total == 0 or len(names) < 2:
        return {"chi2": None, "p_value": None, "mismatch": bool(unexpected), "observed": observed,
                "expected": dict(zip(names, expected.tolist(), strict=True)), "unexpected_arms": unexpected}
    chi2, p = stats.chisquare(counts, expected)
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < SRM_ALPHA or unexpected),
            "observed": {n: int(c) for n, c in zip(names, counts, strict=True)},
            "expected": {n: float(e) for n, e in zip(names, expected, strict=True)}, "unexpected_arms": unexpected}


def ab_report(logs: Path, feedback: Path | None = None, shares: dict[str, float] | None = None,
              control: str | None = None, window_s: float = DEFAULT_WINDOW_S,
              events: Iterable[str] = DEFAULT_EVENTS, alpha: float = 0.05, power: float = 0.8,
              mde: float | None = None) -> dict:
    """The A/B report: per-arm metrics, lifts against ``control``, the SRM check and power."""
    totals = per_user_totals(logs, feedback, window_s, events)
    if totals.empty:
        raise ValueError(f"{logs}: no impressions to analyse")
    arms_seen = sorted(totals["arm"].unique())
    shares_source = "config" if shares else "equal (no experiments config given)"
    shares = shares or {arm: 1 / len(arms_seen) for arm in arms_seen}
    order = [arm for arm in shares if arm in arms_seen] + [arm for arm in arms_seen if arm not in shares]
    control = control or order[0]
    if control not in arms_seen:
        raise ValueError(f"control arm {control!r} has no traffic in the logs; arms: {arms_seen}")
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    arms: dict[str, dict] = {}
    estimates: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in order:
        mine = totals[totals["arm"] == arm]
        clicks = mine["clicks"].to_numpy(np.float64)
        ctr = ratio(clicks, mine["impressions"].to_numpy(np.float64))
        cpr = ratio(clicks, mine["requests"].to_numpy(np.float64))
        estimates[arm] = {"ctr": ctr, "clicks_per_request": cpr}
        arms[arm] = {"users": int(len(mine)), "requests": int(mine["requests"].sum()),
                     "impressions": int(mine["impressions"].sum()), "clicks": float(clicks.sum()),
                     **{name: _interval(*estimates[arm][name], z_alpha) for name in METRICS}}

    lifts: dict[str, dict] = {}
    power_out: dict[str, dict] = {}
    for arm in order:
        if arm == control:
            continue
        lifts[arm] = {name: _lift(estimates[arm][name], estimates[control][name], z_alpha) for name in METRICS}
        power_out[arm] = {name: _power(estimates[arm][name], estimates[control][name], z_alpha, z_power, mde,
                                       arms[arm]["users"], arms[control]["users"]) for name in METRICS}
    observed_users = {arm: arms[arm]["users"] for arm in order}
    return {
        "control": control,
        "shares": shares,
        "shares_source": shares_source,
        "alpha": alpha,
        "power": power,
        "arms": arms,
        "lift_vs_control": lifts,
        "srm": srm_check(observed_users, shares),
        "mde": power_out,
    }


def _interval(value: float, se: float, z: float) -> dict:
    return {"value": value, "se": se, "low": value - z * se, "high": value + z * se}


def _lift(treatment: tuple[float, float], control: tuple[float, float], z: float) -> dict:
    (t, se_t), (c, se_c) = treatment, control
    diff, se = t - c, math.sqrt(se_t**2 + se_c**2)
    p = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else math.nan
    relative = t / c - 1 if c else math.nan
    se_rel = math.sqrt(se_t**2 / c**2 + t**2 * se_c**2 / c**4) if c else math.nan
    return {"absolute": diff, "absolute_low": diff - z * se, "absolute_high": diff + z * se,
            "relative": relative, "relative_low": relative - z * se_rel, "relative_high": relative + z * se_rel,
            "p_value": p, "significant": bool(p < 2 * stats.norm.sf(z))}


def _power(treatment: tuple[float, float], control: tuple[float, float], z_alpha: float, z_power: float,
           target: float | None, users_t: int, users_c: int) -> dict:
    (_, se_t), (c, se_c) = treatment, control
    se = math.sqrt(se_t**2 + se_c**2)
    mde_abs = (z_alpha + z_power) * se
    out = {"mde_absolute": mde_abs, "mde_relative": mde_abs / c if c else math.nan}
    if target is not None and c and se > 0:
        scale = (mde_abs / (target * c)) ** 2  # users needed grow as (current MDE / target MDE)^2
        out.update({"target_relative_mde": target, "users_needed": {"treatment": math.ceil(users_t * scale),
                                                                     "control": math.ceil(users_c * scale)}})
    return out


def table(report: dict) -> str:
    lines = [f"control: {report['control']}   shares ({report['shares_source']}): "
             + ", ".join(f"{a} {s:.0%}" for a, s in report["shares"].items()),
             f"{'arm':<12} {'users':>6} {'requests':>8} {'clicks':>7} {'CTR [95% CI]':>26} "
             f"{'clicks/request [95% CI]':>28}"]
    for arm, m in report["arms"].items():
        ctr, cpr = m["ctr"], m["clicks_per_request"]
        lines.append(f"{arm:<12} {m['users']:>6} {m['requests']:>8} {m['clicks']:>7.0f} "
                     f"{ctr['value']:>8.4f} [{ctr['low']:.4f}, {ctr['high']:.4f}] "
                     f"{cpr['value']:>9.4f} [{cpr['low']:.4f}, {cpr['high']:.4f}]")
    for arm, lift in report["lift_vs_control"].items():
        for name in METRICS:
            d = lift[name]
            mde = report["mde"][arm][name]
            lines.append(f"{arm} vs {report['control']} {name}: {d['absolute']:+.4f} "
                         f"[{d['absolute_low']:+.4f}, {d['absolute_high']:+.4f}], relative {d['relative']:+.1%} "
                         f"[{d['relative_low']:+.1%}, {d['relative_high']:+.1%}], p={d['p_value']:.3g}"
                         f"{' *' if d['significant'] else ''}; "
                         f"MDE ({report['power']:.0%} power) {mde['mde_relative']:.1%}"
                         + (f", users needed for {mde['target_relative_mde']:.1%}: "
                            f"{mde['users_needed']['treatment']:,} + {mde['users_needed']['control']:,}"
                            if "users_needed" in mde else ""))
    srm = report["srm"]
    if srm["p_value"] is not None:
        verdict = "SAMPLE RATIO MISMATCH: do not trust these results" if srm["mismatch"] else "ok"
        lines.append(f"SRM check: chi2={srm['chi2']:.2f}, p={srm['p_value']:.3g}: {verdict}")
    return "\n".join(lines)
