"""Off-policy evaluation (OPE): what another policy would have earned, estimated from logged traffic.

A/B tests answer "is B better?" by serving B; OPE answers it from the logs of what A served, so a
policy can be checked before it reaches users. It works because the logging policy is
stochastic and records the exact probability of each thing it showed (``serving/exploration.py``).

Value and model
---------------
A request ``x`` gets a slate; position ``p`` shows item ``a_p`` and earns reward ``r_p`` (a click:
see ``serving/event_log.join_rewards``). The value of a policy ``pi`` is the expected total reward
per request. Under the **item-position model** (the reward at a position depends on the item and
the position, not on the rest of the slate; the simulator's examination model is one)::

    V(pi) = E_x sum_p sum_a pi(a at p | x) * r(x, a, p)

so only the marginals ``pi(a at p | x)`` matter, not whole-slate probabilities. Each logged row
gets the weight ``w = pi(a_p at p | x) / mu(a_p at p | x)`` with ``mu`` the logging policy.

Estimators (``n`` requests; sums over logged rows; ``r_hat`` a reward model, ``q_hat(x) = sum_p
sum_a pi(a at p | x) r_hat(x, a, p)`` its value of ``pi`` on request ``x``)::

    IPS        (1/n) sum_x sum_p min(w, clip) r
    SNIPS      sum_p (n_p / n) * sum_x w r / sum_x w            (self-normalised per position)
    DM         (1/n) sum_x q_hat(x)
    DR         (1/n) sum_x [q_hat(x) + sum_p w (r - r_hat)]
    Switch-DR  (1/n) sum_x [q_hat(x) + sum_p w (r - r_hat) 1(w <= tau)]     (tau = 0: DM; inf: DR)
    SNDR       DM + sum_p (n_p / n) * sum_x w (r - r_hat) / sum_x w

IPS and DR are unbiased when the logging propensities are right and ``mu > 0`` wherever ``pi > 0``;
SNIPS and SNDR trade a small bias for less variance; DM is only as good as ``r_hat``.

Uncertainty and trust
---------------------
Intervals are percentile bootstraps over requests (rows of one request move together; the reward
model is held fixed). The effective sample size ``ESS = (sum w)^2 / sum w^2`` and the maximum weight
say how many rows an estimate really rests on; the mean weight should be 1 (per position, when
``pi`` shows nothing the logger cannot). A report carries a warning when any of these makes the
weighted estimates unreliable, and the rollout gate (:func:`gate`) refuses on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from serving.event_log import TARGET_PROPENSITY, FlatLogs
from serving.exploration import Candidates, ItemCounts, Policy

ESTIMATORS = ("ips", "snips", "dm", "dr", "switch_dr", "sndr")
WEIGHTED = ("ips", "snips", "dr", "switch_dr", "sndr")
# Warn when the weights leave fewer effective rows than this share of the rows (or this many) ...
MIN_ESS_SHARE, MIN_ESS = 0.01, 100.0
# ... when one row carries more than this share of the total weight ...
MAX_WEIGHT_SHARE = 0.05
# ... or when the mean weight is further from 1 than this (plus 3 standard errors).
MEAN_WEIGHT_TOLERANCE = 0.05


class RewardModel:
    """``r_hat(score, position) = scale * sigmoid(b * z(score) + c_position)``: logistic regression on
    the standardised ranker score and one intercept per position, fit on the logged rows by
    Newton's method (ridge 1e-3); ``scale`` is the largest reward (at least 1)."""

    def __init__(self, scores: np.ndarray, positions: np.ndarray, rewards: np.ndarray, n_positions: int):
        self.n_positions = n_positions
        self.mean, self.sd = float(np.mean(scores)), float(np.std(scores)) or 1.0
        self.scale = max(1.0, float(np.max(rewards, initial=0.0)))
        x, y = self._design(scores, positions), rewards / self.scale
        theta = np.zeros(x.shape[1])
        for _ in range(50):
            p = _sigmoid(x @ theta)
            gradient = x.T @ (p - y) + 1e-3 * theta
            hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(x.shape[1])
            step = np.linalg.solve(hessian, gradient)
            theta -= step
            if np.abs(step).max() < 1e-9:
                break
        self.theta = theta

    def predict(self, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.scale * _sigmoid(self._design(scores, positions) @ self.theta)

    def _design(self, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        scores, positions = np.broadcast_arrays(np.asarray(scores, np.float64), np.asarray(positions))
        x = np.zeros((scores.size, 1 + self.n_positions))
        x[:, 0] = (scores.ravel() - self.mean) / self.sd
        x[np.arange(scores.size), 1 + np.minimum(positions.ravel(), self.n_positions) - 1] = 1.0
        return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


@dataclass(frozen=True)
class Evidence:
    """What the estimators need, as ``(requests, positions)`` arrays (position ``p`` in column
    ``p - 1``; absent rows are 0): rewards, presence, weights, the reward model's prediction for
    the logged item, and each request's ``q_hat`` (``None`` without logged candidates)."""

    reward: np.ndarray
    present: np.ndarray
    weight: np.ndarray
    predicted: np.ndarray
    direct: np.ndarray | None


def row_grid(rows: pd.DataFrame, requests: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    """(request index, position index) of each row, and the number of positions."""
    request_index = pd.Index(requests).get_indexer(rows["request_id"])
    if (request_index < 0).any():
        raise ValueError(f"row of unknown request {rows['request_id'].iloc[int(np.argmax(request_index < 0))]!r}")
    positions = rows["position"].to_numpy(np.int64)
    return request_index, positions - 1, int(positions.max(initial=1))


def counts_from_rows(rows: pd.DataFrame) -> ItemCounts:
    """Impressions and summed rewards per item: the evidence a Thompson target is evaluated with."""
    grouped = rows.groupby("item_id")["reward"].agg(["size", "sum"])
    return ItemCounts(grouped["size"].astype(float).to_dict(), grouped["sum"].astype(float).to_dict())


def collect(logs: FlatLogs, target: Policy | None = None, target_scores: list[np.ndarray] | None = None) -> Evidence:
    """Weights and reward-model terms of a target policy on the logged requests.

    With ``target``, its marginals are computed on each request's logged candidates (rows whose
    item is not a candidate, e.g. the popularity fill, are shown by every policy: weight 1, and
    their observed reward stands in for ``r_hat``). Without it, the rows' ``target_propensity``
    is used, or, when absent, the logging policy itself (every weight 1).

    ``target_scores`` (one array per logged request, aligned with its candidates) are the scores
    the target ranks by when it is another bundle (``monitoring/rescoring.py``); the reward model
    keeps the logged scores, which describe the items as they were shown."""
    rows = logs.rows
    request_ids = logs.requests["request_id"] if logs.requests is not None else pd.Series(rows["request_id"].unique())
    req, pos, n_positions = row_grid(rows, request_ids)
    shape = (len(request_ids), n_positions)
    reward, present = np.zeros(shape), np.zeros(shape, dtype=bool)
    reward[req, pos], present[req, pos] = rows["reward"].to_numpy(np.float64), True
    logging = rows["propensity"].to_numpy(np.float64)
    weight, predicted = np.zeros(shape), np.zeros(shape)

    if target is None or logs.requests is None:
        if target is not None:
            raise ValueError("a target policy needs impression logs with candidates (JSON lines), not flat rows")
        has_target = TARGET_PROPENSITY in rows.columns
        weight[req, pos] = rows[TARGET_PROPENSITY].to_numpy(np.float64) / logging if has_target else 1.0
        return Evidence(reward, present, weight, predicted, None)

    candidate_row, score = _candidate_rows(logs, req)
    fixed = candidate_row < 0
    if (logging[fixed] < 1).any():
        bad = rows[fixed & (logging < 1)].iloc[0]
        raise ValueError(f"request {bad['request_id']}: item {bad['item_id']} was shown with propensity "
                         f"{bad['propensity']} but is not among the logged candidates (log more candidates)")
    model = RewardModel(score[~fixed], pos[~fixed] + 1, reward[req, pos][~fixed], n_positions) if (~fixed).any() \
        else None
    target_prop = np.ones(len(rows))
    direct = np.zeros(shape[0])
    np.add.at(direct, req[fixed], reward[req[fixed], pos[fixed]])
    order = np.argsort(req, kind="stable")
    starts = np.searchsorted(req[order], np.arange(shape[0] + 1))
    for n, request in enumerate(logs.requests.itertuples(index=False)):
        if not request.candidate_ids:
            continue
        k = int(request.k)
        ranked_by = request.candidate_scores if target_scores is None else target_scores[n]
        marginals = target.marginals(Candidates(request.candidate_ids, ranked_by), k, request.request_id, request.ts)
        mine = order[starts[n] : starts[n + 1]]
        mine = mine[~fixed[mine]]
        target_prop[mine] = marginals[candidate_row[mine], pos[mine]]
        if model is not None:
            columns = np.arange(min(k, n_positions))
            expected = model.predict(request.candidate_scores[:, None], columns[None, :] + 1).reshape(-1, columns.size)
            direct[n] += float((marginals[:, columns] * expected).sum())
    weight[req, pos] = target_prop / logging
    predicted[req, pos] = rows["reward"].to_numpy(np.float64)
    if model is not None:
        predicted[req[~fixed], pos[~fixed]] = model.predict(score[~fixed], pos[~fixed] + 1)
    return Evidence(reward, present, weight, predicted, direct)


def _candidate_rows(logs: FlatLogs, req: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's index among its request's logged candidates (-1 if absent) and that score."""
    index = np.full(len(logs.rows), -1, dtype=np.int64)
    score = np.zeros(len(logs.rows))
    lookups = [{item: i for i, item in enumerate(ids)} for ids in logs.requests["candidate_ids"]]
    scores = logs.requests["candidate_scores"].to_list()
    for j, (n, item) in enumerate(zip(req, logs.rows["item_id"], strict=True)):
        i = lookups[n].get(item, -1)
        if i >= 0:
            index[j], score[j] = i, scores[n][i]
    return index, score


def logged_evidence(logs: FlatLogs) -> Evidence:
    """The traffic as it was served: every weight 1, so IPS is the logged mean reward per request."""
    return collect(FlatLogs(logs.rows.drop(columns=TARGET_PROPENSITY, errors="ignore"), None))


# --- estimates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass
class Report:
    """Estimates with 95% intervals, and the weight diagnostics that say whether to trust them."""

    target: str
    n_requests: int
    n_rows: int
    estimates: dict[str, Estimate]
    ess: float
    max_weight: float
    mean_weight: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "estimates": {name: asdict(e) for name, e in self.estimates.items()}}

    def table(self) -> str:
        lines = [f"target: {self.target}   requests: {self.n_requests:,}   rows: {self.n_rows:,}",
                 f"{'estimator':<10} {'value':>9} {'95% low':>9} {'95% high':>9}"]
        lines += [f"{name:<10} {e.value:>9.4f} {e.low:>9.4f} {e.high:>9.4f}" for name, e in self.estimates.items()]
        lines.append(f"ESS {self.ess:,.0f} of {self.n_rows:,} rows, max weight {self.max_weight:.1f}, "
                     f"mean weight {self.mean_weight:.3f}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def evaluate(evidence: Evidence, target: str, clip: float | None = None, switch_tau: float = 10.0,
             n_boot: int = 500, seed: int = 0) -> Report:
    """Every estimator that the evidence supports (DM and the DR family need logged candidates),
    with percentile-bootstrap 95% intervals over requests."""
    n = evidence.reward.shape[0]
    if n == 0:
        raise ValueError("no logged requests to evaluate")
    resamples = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    counts = np.vstack([np.ones(n), resamples])  # row 0: the data as logged
    values = _estimators(evidence, counts, clip, switch_tau)
    estimates = {
        name: Estimate(float(v[0]), float(np.percentile(v[1:], 2.5)), float(np.percentile(v[1:], 97.5)))
        for name, v in values.items()
    }
    w = evidence.weight[evidence.present]
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    return Report(target, n, int(evidence.present.sum()), estimates, ess, float(w.max(initial=0.0)),
                  float(w.mean()) if w.size else 0.0, _warnings(w, ess))


def _estimators(ev: Evidence, counts: np.ndarray, clip: float | None, switch_tau: float) -> dict[str, np.ndarray]:
    """Each estimator for each row of resampling ``counts`` (how often each request is drawn)."""
    n = ev.reward.shape[0]
    w = ev.weight * ev.present
    clipped = np.minimum(w, clip) if clip is not None else w
    share = (counts @ ev.present.astype(np.float64)) / n  # n_p / n per resample and position

    def normalised(numerator: np.ndarray) -> np.ndarray:
        total = counts @ w
        ratio = np.divide(counts @ numerator, total, out=np.zeros_like(total), where=total > 0)
        return (share * ratio).sum(axis=1)

    out = {"ips": counts @ (clipped * ev.reward).sum(axis=1) / n, "snips": normalised(w * ev.reward)}
    if ev.direct is not None:
        residual = w * (ev.reward - ev.predicted)
        dm = counts @ ev.direct / n
        out["dm"] = dm
        out["dr"] = dm + counts @ residual.sum(axis=1) / n
        out["switch_dr"] = dm + counts @ (residual * (w <= switch_tau)).sum(axis=1) / n
        out["sndr"] = dm + normalised(residual)
    return out


def _warnings(w: np.ndarray, ess: float) -> list[str]:
    out = []
    if w.size and ess < max(MIN_ESS, MIN_ESS_SHARE * w.size):
        out.append(f"effective sample size {ess:,.0f} of {w.size:,} rows: the weighted estimates rest on few rows")
    if w.size and w.sum() > 0 and w.max() / w.sum() > MAX_WEIGHT_SHARE:
        out.append(f"one row carries {w.max() / w.sum():.0%} of the total weight (max weight {w.max():.1f})")
    if w.size > 1:
        error = abs(w.mean() - 1.0)
        if error > MEAN_WEIGHT_TOLERANCE + 3 * w.std(ddof=1) / np.sqrt(w.size):
            out.append(f"mean weight {w.mean():.3f}, not 1: the target shows what the logger never does, "
                       "or the logged propensities are wrong")
    return out


# --- safe rollout -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str


def gate(candidate: Report, baseline: Estimate, estimator: str = "dr", tolerance: float = 0.05) -> Decision:
    """Accept a candidate only if its estimate is trustworthy and its lower 95% bound is no more than
    ``tolerance`` (a fraction of the baseline's value) below the baseline's estimate."""
    if estimator not in candidate.estimates:
        raise ValueError(f"estimator {estimator!r} is not available for these logs; "
                         f"available: {', '.join(candidate.estimates)}")
    estimate, floor = candidate.estimates[estimator], baseline.value * (1 - tolerance)
    if estimator in WEIGHTED and candidate.warnings:
        return Decision(False, f"refused: {candidate.target}: the {estimator} estimate is unreliable "
                               f"({candidate.warnings[0]})")
    if estimate.low < floor:
        return Decision(False, f"refused: {candidate.target}: {estimator} lower bound {estimate.low:.4f} is below "
                               f"{floor:.4f}, the baseline's {baseline.value:.4f} less the {tolerance:.0%} tolerance")
    return Decision(True, f"accepted: {candidate.target}: {estimator} {estimate.value:.4f} "
                          f"[{estimate.low:.4f}, {estimate.high:.4f}] vs baseline {baseline.value:.4f} "
                          f"(tolerance {tolerance:.0%})")
