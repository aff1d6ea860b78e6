"""Simulated traffic for off-policy evaluation, where the true value of every policy is known.

A request is a user at a time with ``n_candidates`` released items (drawn by popularity, like the
simulator's own candidate pool) and ranker scores equal to the true attractiveness logit plus
Gaussian noise (an imperfect ranker). A logging policy serves the requests through the real
policy code; clicks are drawn from the simulator's click model at the shown positions; the
impression and feedback logs are written in the real schema and read back through the real
flattening and reward join. A policy's true value is its expected clicks per request on the
logged requests, computed exactly from its marginals and the click model (the ground truth of
Open Bandit Pipeline's synthetic benchmarks, too): what running it on that traffic would earn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitoring.ope import ESTIMATORS, collect, evaluate
from serving.event_log import (
    FEEDBACK_FILE,
    IMPRESSIONS_FILE,
    FeedbackRecord,
    ImpressionRecord,
    LogWriter,
    SlateEntry,
    load_logs,
)
from serving.exploration import Candidates, Policy, make_policy
from training.simulator import DAY, ETA, SimConfig, Simulator

LOGGER = ("softmax", {"temperature": 0.5, "rate": 0.3})
TARGETS = {
    "greedy": ("greedy", {}),
    "epsilon_greedy(0.1)": ("epsilon_greedy", {"epsilon": 0.1, "epsilon_min": 0.1}),
    "softmax(T=0.25)": ("softmax", {"temperature": 0.25, "rate": 0.3}),
    "softmax(T=1)": ("softmax", {"temperature": 1.0, "rate": 0.3}),
    "squarecb(gamma=5)": ("squarecb", {"gamma": 5.0, "rate": 0.3}),
}


@dataclass(frozen=True)
class Contexts:
    user_ids: np.ndarray  # (n,)
    ts: np.ndarray  # (n,)
    item_ids: np.ndarray  # (n, M), best score first
    scores: np.ndarray  # (n, M)
    click: np.ndarray  # (n, M, k): true click probability of candidate m at position p

    def __len__(self) -> int:
        return self.ts.size

    def candidates(self, n: int) -> Candidates:
        return Candidates(list(self.item_ids[n]), self.scores[n])


def draw_contexts(sim: Simulator, n: int, seed: int, n_candidates: int = 50, k: int = 10,
                  ranker_noise: float = 0.5) -> Contexts:
    rng = np.random.default_rng(seed)
    cfg = sim.config
    ts = cfg.start_ts + rng.integers(DAY, cfg.n_days * DAY, n)
    users = sim.user_ids[rng.integers(0, cfg.n_users, n)]
    released = sim.release_ts[None, :] <= ts[:, None]
    keys = np.where(released, sim.item_log_popularity[None, :] + rng.gumbel(size=released.shape), -np.inf)
    items = np.argpartition(-keys, n_candidates - 1, axis=1)[:, :n_candidates]
    attractiveness = sim.click_probability(np.repeat(users, n_candidates), sim.item_ids[items.ravel()], 1,
                                           np.repeat(ts, n_candidates)).reshape(n, n_candidates)
    scores = np.log(attractiveness / (1 - attractiveness)) + ranker_noise * rng.standard_normal(items.shape)
    order = np.argsort(-scores, axis=1, kind="stable")
    items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
    attractiveness = np.take_along_axis(attractiveness, order, 1)
    examination = np.arange(1, k + 1, dtype=np.float64) ** -ETA
    return Contexts(users, ts.astype(np.float64), sim.item_ids[items], scores,
                    attractiveness[:, :, None] * examination[None, None, :])


def request_id(seed: int, n: int) -> str:
    return f"s{seed}-r{n}"


def true_value(policy: Policy, contexts: Contexts, seed: int, k: int = 10) -> float:
    """Expected clicks per request: ``mean_x sum_{i,p} pi(i at p | x) P(click | x, i, p)``."""
    total = 0.0
    for n in range(len(contexts)):
        marginals = policy.marginals(contexts.candidates(n), k, request_id(seed, n), contexts.ts[n])
        total += float((marginals * contexts.click[n]).sum())
    return total / len(contexts)


def serve_logs(policy: Policy, contexts: Contexts, out: Path, seed: int, k: int = 10) -> Path:
    """Serve every context with the policy, draw clicks, and write both logs to ``out``."""
    rng = np.random.default_rng([seed, 1])
    impressions, feedback = LogWriter(out / IMPRESSIONS_FILE), LogWriter(out / FEEDBACK_FILE)
    for n in range(len(contexts)):
        rid, ts, user = request_id(seed, n), float(contexts.ts[n]), str(contexts.user_ids[n])
        candidates = contexts.candidates(n)
        slate = policy.choose(candidates, k, rid, ts)
        positions = np.arange(slate.rows.size)
        clicked = rng.random(slate.rows.size) < contexts.click[n, slate.rows, positions]
        entries = [SlateEntry(str(candidates.item_ids[r]), p + 1, float(candidates.scores[r]), float(q), "ann")
                   for p, (r, q) in enumerate(zip(slate.rows, slate.propensities, strict=True))]
        impressions.write(ImpressionRecord(
            rid, ts, user, "sim", {"name": policy.name, "params": policy.params}, None, entries, k=k,
            slate_propensity=slate.slate_propensity, policy_state=slate.state,
            candidates={"item_ids": [str(i) for i in candidates.item_ids],
                        "scores": [float(s) for s in candidates.scores]},
        ))
        for entry in np.array(entries, dtype=object)[clicked]:
            feedback.write(FeedbackRecord(rid, ts + 30.0, user, entry.item_id, "click", 1.0))
    impressions.close()
    feedback.close()
    return out


class Remembered:
    """A policy whose marginals are computed once per request (the truth and the estimators share them)."""

    def __init__(self, policy: Policy):
        self.policy, self.name, self._seen = policy, policy.name, {}

    @property
    def params(self) -> dict:
        return self.policy.params

    def marginals(self, candidates: Candidates, k: int, request_id: str, ts: float) -> np.ndarray:
        if request_id not in self._seen:
            self._seen[request_id] = self.policy.marginals(candidates, k, request_id, ts)
        return self._seen[request_id]


@dataclass(frozen=True)
class Case:
    target: str
    seed: int
    truth: float
    estimates: dict  # estimator -> (value, low, high)
    ess: float
    warnings: int


def run_study(workdir: Path, seeds: list[int], n_requests: int, targets: dict[str, tuple[str, dict]] | None = None,
              logger: tuple[str, dict] = LOGGER, preset: str = "tiny", n_boot: int = 300) -> list[Case]:
    """Log with ``logger`` on fresh contexts per seed, then estimate every target from those logs."""
    targets = targets or TARGETS
    sim = Simulator(SimConfig.preset(preset, seed=0))
    cases = []
    for seed in seeds:
        contexts = draw_contexts(sim, n_requests, seed)
        logs = load_logs(serve_logs(make_policy(*logger), contexts, workdir / f"seed{seed}", seed))
        for name, spec in targets.items():
            target = Remembered(make_policy(*spec))
            truth = true_value(target, contexts, seed)
            report = evaluate(collect(logs, target), name, n_boot=n_boot, seed=seed)
            estimates = {e: (v.value, v.low, v.high) for e, v in report.estimates.items()}
            cases.append(Case(name, seed, truth, estimates, report.ess, len(report.warnings)))
    return cases


def summary(cases: list[Case]) -> list[dict]:
    """Per target and estimator: mean truth, bias, RMSE and 95% interval coverage over seeds."""
    out = []
    for target in dict.fromkeys(c.target for c in cases):
        mine = [c for c in cases if c.target == target]
        truth = np.array([c.truth for c in mine])
        for estimator in ESTIMATORS:
            values = np.array([c.estimates[estimator] for c in mine])
            error = values[:, 0] - truth
            covered = (values[:, 1] <= truth) & (truth <= values[:, 2])
            out.append({"target": target, "estimator": estimator, "truth": float(truth.mean()),
                        "bias": float(error.mean()), "rmse": float(np.sqrt((error**2).mean())),
                        "coverage": float(covered.mean()), "n": len(mine)})
    return out
