"""Rolling-origin backtest: the two-stage system against strong baselines, fold by fold.

A single global split leaves too few test users on small logs to tell methods apart, so the
benchmark repeats the split at ``folds`` cutoffs, ``step_days`` apart, the last one
``horizon_days`` before the end of the log. At each cutoff T:

    ──── two-tower ──── t0 ── ranker labels ── T ── test window (horizon) ──►
                                                │
                      every method recommends as of T from data before T

- the two-tower model learns from interactions before t0 = T - ``ranker_days``; the ranker from
  candidates generated as of t0, labelled by [t0, T); co-visitation, popularity and features are
  as of T when recommending (the same code as ``recsys train`` and serving);
- test pairs are the users with history before T who take at least one new item in
  [T, T + horizon); items they had before T are excluded from the recommendations and the truth,
  items first seen after T stay in the truth. Users with no history before T are cold-start pairs,
  reported apart.

Metrics are pooled over all (cutoff, user) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from feast import FeatureStore

from training import baselines
from training.candidates import (
    SOURCES,
    CandidateSettings,
    build_candidates_model,
    generate,
    requests_as_of,
    retrieval_only_scores,
    source_rows,
    unavailable_rows,
)
from training.dataset import Dataset
from training.evaluate import average_precision_at, ndcg_at, recall_at
from training.features import DAY, category_vocabulary, seen_items
from training.pipeline import tower_inputs
from training.ranker import RankerConfig, build_examples, train_ranker
from training.ranker_features import RANKER_FEATURES
from training.retrieval_index import build_index
from training.two_stage import RetrievalModel, candidate_features, rank
from training.two_tower import TwoTowerConfig, train_two_tower

K = 100
TWO_STAGE = "two-stage"
RETRIEVAL = "retrieval only"
MERGED = "merged (ranker order)"
BASELINES = {"global popularity": baselines.global_popularity, "recent popularity": baselines.recent_popular,
             "item-kNN": baselines.item_knn}


@dataclass(frozen=True)
class BacktestConfig:
    folds: int = 12
    step_days: int = 90
    horizon_days: int = 90
    ranker_days: int = 90
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    # ~15 users per 90-day label window on MovieLens: small trees, subsampling and L2 keep LambdaMART
    # from memorising them (NDCG@10 0.073 with the `recsys train` defaults, 0.105 with these).
    ranker: RankerConfig = field(default_factory=lambda: RankerConfig(
        n_trees=100, num_leaves=7, min_data_in_leaf=50, feature_fraction=0.8, bagging_fraction=0.8, lambda_l2=10.0,
        threads=1))


def cutoffs(dataset: Dataset, config: BacktestConfig) -> list[int]:
    """Day-aligned cutoffs, oldest first; the last ``horizon_days`` before the end of the log."""
    last = (dataset.end_ts + 1 - config.horizon_days * DAY) // DAY * DAY
    return [last - i * config.step_days * DAY for i in reversed(range(config.folds))]


@dataclass
class Fold:
    """One cutoff's rankings (top-K item ids per method and user) and truths."""

    cutoff: int
    truth: dict[str, set[str]]  # warm users: new items in the test window
    cold_truth: dict[str, set[str]]  # users with no history before the cutoff
    rankings: dict[str, dict[str, list[str]]]  # method → user → items (warm users)
    cold_rankings: dict[str, dict[str, list[str]]]
    sources: dict[str, dict[str, list[str]]]  # candidate source (and MERGED) → user → items
    catalog: int  # items in the catalog at the cutoff
    ranker_examples: int


def fold_truth(interactions: pd.DataFrame, cutoff: int, horizon_days: int) -> tuple[dict, dict, dict]:
    """(seen before the cutoff, warm truth, cold-start truth)."""
    seen = seen_items(interactions[interactions["ts"] < cutoff])
    window = interactions[(interactions["ts"] >= cutoff) & (interactions["ts"] < cutoff + horizon_days * DAY)]
    after = seen_items(window)
    warm = {u: items - seen[u] for u, items in after.items() if u in seen and items - seen[u]}
    cold = {u: items for u, items in after.items() if u not in seen}
    return seen, warm, cold


def run_fold(dataset: Dataset, store: FeatureStore, cutoff: int, config: BacktestConfig) -> Fold:
    """Train everything on data before ``cutoff`` and rank for its test users."""
    interactions = dataset.interactions
    t0 = cutoff - config.ranker_days * DAY
    seen, truth, cold_truth = fold_truth(interactions, cutoff, config.horizon_days)
    retrieval = _train_retrieval(dataset, store, t0, config)
    examples = build_examples(build_candidates_model(retrieval, interactions, t0, config.candidates), store,
                              dataset, t0, cutoff)
    booster = train_ranker(examples, RANKER_FEATURES, config.ranker)

    model = build_candidates_model(retrieval, interactions, cutoff, config.candidates)
    unavailable = unavailable_rows(model, dataset, cutoff)
    ids = np.array(retrieval.item_ids, dtype=object)
    users, cold_users = sorted(truth), sorted(cold_truth)
    requests = requests_as_of(interactions, users + cold_users, cutoff)
    candidates = generate(model, requests, unavailable)
    features = candidate_features(retrieval, store, candidates, cutoff)
    scores = booster.predict(features.astype(np.float64), num_threads=config.ranker.threads)

    def items(ranked: dict) -> dict[str, list[str]]:
        return {u: [ids[r] for r, _ in picks] for u, picks in ranked.items()}

    rankings = {name: baseline(interactions, cutoff, users, seen, K) for name, baseline in BASELINES.items()}
    # Short lists are filled with recent popularity, as serving and batch recommendation fill them.
    fill = baselines.recent_popular(interactions, cutoff, users + cold_users, seen, K)
    two_stage = {u: (picks + [i for i in fill[u] if i not in picks])[:K]
                 for u, picks in items(rank(candidates, scores, K)).items()}
    rankings[RETRIEVAL] = {u: r for u, r in items(rank(candidates, retrieval_only_scores(candidates), K)).items()
                           if u in truth}
    rankings[TWO_STAGE] = {u: two_stage[u] for u in users}
    cold_rankings = {"recent popularity": {u: fill[u] for u in cold_users},
                     TWO_STAGE: {u: two_stage[u] for u in cold_users}}
    proposed = source_rows(model, requests[: len(users)], unavailable)
    sources = {s: {u: list(ids[p[s]]) for u, p in zip(users, proposed, strict=True)} for s in SOURCES}
    merged = items(rank(candidates, scores, int(candidates.sizes.max(initial=0))))  # all, in ranker order
    sources[MERGED] = {u: merged[u] for u in users}
    catalog = len(retrieval.item_ids) - len(unavailable)
    return Fold(cutoff, truth, cold_truth, rankings, cold_rankings, sources, catalog, len(examples.labels))


def _train_retrieval(dataset: Dataset, store: FeatureStore, t0: int, config: BacktestConfig) -> RetrievalModel:
    history = dataset.interactions[dataset.interactions["ts"] < t0]
    item_ids = dataset.items["item_id"].astype(str).tolist()
    user_ids = sorted(history["user_id"].unique())
    inputs = tower_inputs(store, user_ids, item_ids, t0, len(category_vocabulary(dataset.items)))
    user_index = {u: i + 1 for i, u in enumerate(user_ids)}
    item_index = {it: i + 1 for i, it in enumerate(item_ids)}
    user_vectors, item_vectors, _ = train_two_tower(
        history["user_id"].map(user_index).to_numpy(), history["item_id"].map(item_index).to_numpy(), inputs,
        config.two_tower)
    index, _ = build_index(item_vectors[1:], seed=config.two_tower.seed)
    return RetrievalModel(item_ids, item_vectors[1:], user_ids, user_vectors[1:], index)


def run_backtest(dataset: Dataset, store: FeatureStore, config: BacktestConfig,
                 on_fold: Callable[[int, int], None] = lambda done, total: None) -> list[Fold]:
    folds = []
    for n, cutoff in enumerate(cutoffs(dataset, config)):
        folds.append(run_fold(dataset, store, cutoff, config))
        on_fold(n + 1, config.folds)
    return folds


# --- metrics ---------------------------------------------------------------------------------------


def pair_metrics(ranked: list[str], truth: set[str]) -> dict[str, float]:
    return {
        "recall@10": recall_at(ranked, truth, 10),
        "recall@50": recall_at(ranked, truth, 50),
        "recall@100": recall_at(ranked, truth, 100),
        "ndcg@10": ndcg_at(ranked, truth, 10),
        "map@10": average_precision_at(ranked, truth, 10),
        "hr@10": float(bool(set(ranked[:10]) & truth)),
    }


def method_table(folds: list[Fold], cold: bool = False) -> pd.DataFrame:
    """Pooled metrics per method: means over pairs, NDCG@10's standard error, coverage@10, share served."""
    rows = {}
    methods = (folds[0].cold_rankings if cold else folds[0].rankings) if folds else {}
    for method in methods:
        per_pair, coverage, served = [], [], []
        for fold in folds:
            truth = fold.cold_truth if cold else fold.truth
            ranked = (fold.cold_rankings if cold else fold.rankings)[method]
            per_pair += [pair_metrics(ranked.get(u, []), items) for u, items in truth.items()]
            served += [bool(ranked.get(u)) for u in truth]
            coverage.append(len({i for u in truth for i in ranked.get(u, [])[:10]}) / max(fold.catalog, 1))
        frame = pd.DataFrame(per_pair)
        n = len(frame)
        rows[method] = {
            **frame.mean().to_dict(),
            "ndcg@10 se": float(frame["ndcg@10"].std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "coverage@10": float(np.mean(coverage)),
            "served": float(np.mean(served)) if served else float("nan"),
            "pairs": n,
        }
    return pd.DataFrame(rows).T


def per_pair_ndcg(folds: list[Fold], method: str) -> np.ndarray:
    return np.array([ndcg_at(fold.rankings[method].get(u, []), items, 10)
                     for fold in folds for u, items in fold.truth.items()])


@dataclass(frozen=True)
class PairedComparison:
    method: str
    baseline: str
    mean_difference: float
    ci_low: float
    ci_high: float
    ratio: float


def paired_bootstrap(folds: list[Fold], method: str, baseline: str, resamples: int = 10_000,
                     seed: int = 0) -> PairedComparison:
    """Per-pair NDCG@10 difference (method - baseline), its mean and percentile 95% bootstrap CI."""
    a, b = per_pair_ndcg(folds, method), per_pair_ndcg(folds, baseline)
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedComparison(method, baseline, float(diff.mean()), float(low), float(high),
                            float(a.mean() / b.mean()) if b.mean() > 0 else float("inf"))


def source_recall(folds: list[Fold]) -> pd.DataFrame:
    """Recall of each candidate source (at its own size and at 100) and of the merged set, pooled."""
    rows = {}
    for source in [*SOURCES, MERGED]:
        full, at_100, sizes = [], [], []
        for fold in folds:
            for user, items in fold.truth.items():
                proposed = fold.sources[source].get(user, [])
                full.append(recall_at(proposed, items, len(proposed)) if proposed else 0.0)
                at_100.append(recall_at(proposed, items, 100))
                sizes.append(len(proposed))
        rows[source] = {"candidates": float(np.mean(sizes)), "recall@all": float(np.mean(full)),
                        "recall@100": float(np.mean(at_100))}
    return pd.DataFrame(rows).T
