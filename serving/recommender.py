"""One /recommend request, stage by stage.

    user features + seen items + recent items (online store)
      → candidate sources, seen items excluded                   (retrieval)
        (two-tower ANN, co-visitation, recent popularity: training/candidates.py)
      → candidate item features (online store)                   (features)
      → ranker_matrix (with the pair features) → ONNX scores     (ranking)
      → policy picks the slate, with propensities                (exploration)
      → popular items fill any gap, impression logged            (logging)

Each item's ``source`` says which candidate source proposed it (``ann``, ``covis``, ``popular``);
users the two-tower model never saw get co-visitation and popular candidates, still ranked.
All stages run inline on the request's thread (no handoffs; serving/deadline.py). Each has a
budget and a fallback, so no failure reaches the user as an error or a late answer:

    stage       on failure or overrun (serving/store_guard.py, serving/deadline.py)
    features    the user's last features read, or defaults; cached item rows, or nulls
    retrieval   no candidates: the popularity fallback fills the slate
    ranking     candidates are ordered by their two-tower score

and the answer is marked ``degraded``. If the request deadline passes first, the event loop
answers with :meth:`Recommender.fallback` instead. A request reads the current model once, so a
bundle swap never mixes versions. The answer has k items unless the catalog has fewer than k items
the user has not seen.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from serving.deadline import Claim, within
from serving.event_log import ImpressionRecord, LogWriter, SlateEntry
from serving.exploration import Candidates, GreedyPolicy, Policy, Slate
from serving.item_cache import ItemColumns
from serving.model import ServingModel
from serving.online_features import OnlineFeatures, UserFeatures
from training.candidates import SOURCE_POPULAR, CandidateRequest, generate
from training.ranker_features import RANKER_FEATURES, ranker_matrix
from training.two_stage import CandidateSet


@dataclass
class RecommendedItem:
    item_id: str
    score: float
    position: int
    propensity: float
    source: str


@dataclass
class Recommendation:
    request_id: str
    user_id: str
    model_version: str
    policy: dict
    items: list[RecommendedItem]
    degraded: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    # What the ranker saw and said, for drift monitoring: its input matrix and its scores over the
    # candidates (None when ranking fell back).
    ranker_inputs: np.ndarray | None = None
    ranker_scores: np.ndarray | None = None

    def drift_sample(self) -> tuple[np.ndarray, float] | None:
        """One candidate's ranker inputs and score, picked uniformly by the request id: what drift
        monitoring counts per request. One row, not all candidates, keeps the counted values nearly
        independent across requests (the candidates of one request share the user's features); a
        random row, not the top one, keeps item features from being a handful of trending items."""
        if self.ranker_inputs is None or self.ranker_scores is None or len(self.ranker_scores) == 0:
            return None
        row = zlib.crc32(self.request_id.encode()) % len(self.ranker_scores)
        return self.ranker_inputs[row], float(self.ranker_scores[row])


@dataclass(frozen=True)
class StageBudgets:
    """Seconds a CPU stage may take before its result is dropped for its fallback; None: no budget.
    The store reads have theirs in the request client's socket timeout."""

    retrieval_s: float | None = 0.02
    ranking_s: float | None = 0.02


class StageTimer:
    def __init__(self) -> None:
        self.timings_ms: dict[str, float] = {}
        self.stage_started = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + (now - self.stage_started) * 1000
        self.stage_started = now


@dataclass(frozen=True)
class Request:
    """What was asked, and when: the request as its answer and impression record carry it."""

    user_id: str
    k: int
    context: dict
    request_id: str
    now: float


@dataclass(frozen=True)
class Ranked:
    """The candidates as exploration gets them: ids in source order with their sources, scores (the
    ranker's, or the two-tower scores when ranking fell back) and feature columns."""

    item_ids: list[str]
    sources: np.ndarray
    scores: np.ndarray
    items: ItemColumns
    ranker_inputs: np.ndarray | None = None  # None when ranking fell back


NO_CANDIDATES = Ranked([], np.empty(0, object), np.empty(0, np.float32), {})


class Recommender:
    def __init__(
        self, model: ServingModel, features: OnlineFeatures, impressions: LogWriter,
        clock: Callable[[], float], policy: Policy | None = None, n_candidates: int = 350,
        log_candidates: int = 50, arm: str | None = None, budgets: StageBudgets | None = None,
    ):
        self.model = model
        self.features = features
        self.impressions = impressions
        self.clock = clock
        self.policy = policy or GreedyPolicy()
        self.n_candidates = n_candidates  # cap on the merged candidates (in source order)
        self.log_candidates = log_candidates  # top-M candidates (ids, scores) logged for OPE
        self.arm = arm  # the experiment arm this recommender serves (serving/experiments.py), logged
        self.budgets = budgets or StageBudgets()

    def recommend(self, user_id: str, k: int, context: dict | None = None, request_id: str | None = None,
                  claim: Claim | None = None) -> Recommendation | None:
        """The answer, stage by stage on this thread; None when ``claim`` was taken first (the request
        deadline passed and the event loop answered with :meth:`fallback`)."""
        if claim is not None and claim.taken:  # answered while it waited for this thread
            return None
        model = self.model
        request = Request(user_id, k, context or {}, request_id or uuid.uuid4().hex, self.clock())
        timer = StageTimer()

        user = self.features.user(user_id)
        degraded = user.degraded
        timer.lap("features")

        rows, sources, pairs = self._candidates(model, user_id, user)
        if not within(timer.stage_started, self.budgets.retrieval_s):
            rows, sources, pairs, degraded = rows[:0], sources[:0], {"retrieval_score": NO_CANDIDATES.scores}, True
        timer.lap("retrieval")

        candidate_ids = model.retrieval.item_id_array[rows].tolist()
        items, items_failed = self.features.items(candidate_ids)
        degraded |= items_failed
        timer.lap("features")

        ranked = Ranked(candidate_ids, sources, pairs["retrieval_score"], items)
        if candidate_ids:
            inputs, scores = self._score(model, user, items, request.now, pairs)
            if within(timer.stage_started, self.budgets.ranking_s):
                ranked = replace(ranked, scores=scores, ranker_inputs=inputs)
            else:
                degraded = True
        timer.lap("ranking")
        return self._answer(model, request, user, ranked, degraded, timer, claim)

    def fallback(self, user_id: str, k: int, context: dict | None = None,
                 request_id: str | None = None) -> Recommendation:
        """The answer when the request deadline passed: popular items, leaving out what the user's last
        features read here say they have seen; no store read, no stage. Logged like any answer."""
        request = Request(user_id, k, context or {}, request_id or uuid.uuid4().hex, self.clock())
        return self._answer(self.model, request, self.features.last_known(user_id), NO_CANDIDATES, True,
                            StageTimer(), None)

    def _answer(self, model: ServingModel, request: Request, user: UserFeatures, ranked: Ranked, degraded: bool,
                timer: StageTimer, claim: Claim | None) -> Recommendation | None:
        """Exploration picks the slate, popular items fill any gap; logged if ``claim`` is won."""
        slate = self.policy.choose(Candidates(ranked.item_ids, ranked.scores), request.k, request.request_id,
                                   request.now)
        chosen = [
            RecommendedItem(ranked.item_ids[r], float(ranked.scores[r]), i + 1, float(p), str(ranked.sources[r]))
            for i, (r, p) in enumerate(zip(slate.rows, slate.propensities, strict=True))
        ]
        timer.lap("exploration")

        chosen += self._popular_fill(model, request.k - len(chosen), user.seen_items | set(ranked.item_ids),
                                     len(chosen))
        result = Recommendation(
            request_id=request.request_id,
            user_id=request.user_id,
            model_version=model.version,
            policy={"name": self.policy.name, "params": self.policy.params},
            items=chosen,
            degraded=degraded,
            ranker_inputs=ranked.ranker_inputs,
            ranker_scores=ranked.scores if ranked.ranker_inputs is not None else None,
        )
        result.timings_ms = timer.timings_ms
        if claim is not None and not claim.take():
            return None
        self.impressions.write(self._impression(result, request, user, ranked, slate))
        timer.lap("logging")
        return result

    def _candidates(self, model: ServingModel, user_id: str,
                    user: UserFeatures) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The merged candidates (item rows, sources, pair features), the first ``n_candidates`` in source order."""
        recent = [str(i) for i in user.values.get("rt_recent_items") or []]
        found: CandidateSet = generate(model.candidates, [CandidateRequest(user_id, user.seen_items, recent)])
        n = self.n_candidates
        return found.item_rows[:n], found.sources[:n], {name: v[:n] for name, v in found.pair_features.items()}

    @staticmethod
    def _score(model: ServingModel, user: UserFeatures, items: ItemColumns, now: float,
               pairs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The ranker's input matrix and its scores."""
        users = _repeated(user.values, len(pairs["retrieval_score"]))
        inputs = ranker_matrix(users, items, now, pairs)
        return inputs, model.ranker.score(inputs)

    @staticmethod
    def _popular_fill(model: ServingModel, n: int, exclude: set[str], offset: int) -> list[RecommendedItem]:
        """Most popular items not excluded, positioned after the first ``offset`` items."""
        picks: list[RecommendedItem] = []
        for item, score in zip(model.popular_items, model.popular_scores, strict=True):
            if len(picks) >= n:
                break
            if item not in exclude:
                picks.append(RecommendedItem(item, float(score), offset + len(picks) + 1, 1.0, SOURCE_POPULAR))
        return picks

    def _impression(self, result: Recommendation, request: Request, user: UserFeatures, ranked: Ranked,
                    slate: Slate) -> ImpressionRecord:
        candidate_ids, items, scores = ranked.item_ids, ranked.items, ranked.scores
        top = np.argsort(-scores, kind="stable")[: self.log_candidates]
        names = list(items)
        # the policy's picks are the candidates at slate.rows (popular fill-ins have no features read)
        values = np.column_stack([items[name][slate.rows] for name in names]).tolist() if names else []
        served = {candidate_ids[r]: {name: None if math.isnan(v) else v for name, v in zip(names, row, strict=True)}
                  for r, row in zip(slate.rows, values, strict=True)}
        sample = result.drift_sample()
        return ImpressionRecord(
            request_id=result.request_id,
            ts=request.now,
            user_id=result.user_id,
            model_version=result.model_version,
            policy=result.policy,
            arm=self.arm,
            slate=[SlateEntry(it.item_id, it.position, it.score, it.propensity, it.source) for it in result.items],
            features={"user": _jsonable(user.values), "items": served},
            timings_ms=dict(result.timings_ms),
            k=request.k,
            context=request.context,
            candidates={"item_ids": [candidate_ids[r] for r in top], "scores": scores[top].astype(float).tolist()},
            slate_propensity=slate.slate_propensity,
            policy_state=slate.state,
            degraded=result.degraded,
            ranker_sample=None if sample is None else {
                "features": dict(zip(RANKER_FEATURES, sample[0].tolist(), strict=True)), "score": sample[1]},
        )


def _repeated(values: dict, n: int) -> dict[str, np.ndarray]:
    """The user's numeric features as columns of n rows (vectors as [n, d] broadcast views, no copies)."""
    columns = {}
    for name, value in values.items():
        if isinstance(value, list | np.ndarray):
            vector = np.asarray(value)
            if vector.dtype.kind in "fiu":
                columns[name] = np.broadcast_to(vector.astype(np.float64), (n, len(vector)))
        else:
            columns[name] = np.full(n, np.nan if value is None else float(value))
    return columns


def _jsonable(values: dict) -> dict:
    """Feature values as plain JSON: numpy scalars unwrapped, arrays as lists, NaN/NA as null."""
    out = {}
    for name, value in values.items():
        if isinstance(value, np.ndarray | list):
            out[name] = [v.item() if isinstance(v, np.generic) else v for v in value]
        elif value is None or value is pd.NA or (isinstance(value, float | np.floating) and np.isnan(value)):
            out[name] = None
        else:
            out[name] = value.item() if isinstance(value, np.generic) else value
    return out
