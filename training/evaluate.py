"""Offline evaluation on a temporal split: popularity vs retrieval only vs two-stage.

Every method recommends as of the split time T from what was known before T, for users who had
history before T and interacted with at least one new item in the test window [T, end]. Items
the user had before T are excluded from both the recommendations and the truth.

Metrics use binary relevance: recall@k = hits in the top k / |truth|, and
NDCG@k = sum over hits of 1/log2(rank + 1), divided by the same sum for a perfect list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from feast import FeatureStore

from training.candidates import CandidatesModel, generate, requests_as_of, retrieval_only_scores, unavailable_rows
from training.dataset import Dataset
from training.features import seen_items
from training.two_stage import candidate_features, popularity_ranking, rank

CUTOFFS = (10, 100)


def recall_at(ranked: list[str], truth: set[str], k: int) -> float:
    return len(set(ranked[:k]) & truth) / len(truth)


def ndcg_at(ranked: list[str], truth: set[str], k: int) -> float:
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in truth)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(truth))))
    return dcg / ideal


def average_precision_at(ranked: list[str], truth: set[str], k: int) -> float:
    """MAP@k's per-user term: mean precision at each hit's rank, over min(k, |truth|)."""
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k]):
        if item in truth:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(truth))


def summarize(rankings: dict[str, list[str]], truth: dict[str, set[str]]) -> dict[str, float]:
    """Mean metrics over the users in ``truth`` (a user without a ranking scores zero)."""
    rows = [
        {
            "recall@10": recall_at(rankings.get(u, []), items, 10),
            "recall@100": recall_at(rankings.get(u, []), items, 100),
            "ndcg@10": ndcg_at(rankings.get(u, []), items, 10),
        }
        for u, items in truth.items()
    ]
    means = pd.DataFrame(rows).mean().to_dict() if rows else {}
    return {**{name: float(v) for name, v in means.items()}, "users": len(rows)}


@dataclass(frozen=True)
class EvaluationReport:
    split_ts: int
    users: int
    methods: dict[str, dict[str, float]]

    def table(self) -> str:
        lines = [f"{'method':<16}{'recall@10':>11}{'recall@100':>12}{'ndcg@10':>10}"]
        for name, m in self.methods.items():
            lines.append(f"{name:<16}{m['recall@10']:>11.4f}{m['recall@100']:>12.4f}{m['ndcg@10']:>10.4f}")
        return "\n".join(lines)


def holdout_truth(dataset: Dataset, split_ts: int) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(items seen before the split per user, new items after it for users with history)."""
    seen = seen_items(dataset.interactions[dataset.interactions["ts"] < split_ts])
    after = seen_items(dataset.interactions[dataset.interactions["ts"] >= split_ts])
    truth = {u: items - seen[u] for u, items in after.items() if u in seen and items - seen[u]}
    return seen, truth


@dataclass(frozen=True)
class Evaluation:
    report: EvaluationReport
    # The ranker's input for every evaluated request, and the candidates per request: held-out
    # data for the ONNX parity check.
    features: np.ndarray
    group_sizes: np.ndarray


def evaluate(dataset: Dataset, model: CandidatesModel, store: FeatureStore, split_ts: int,
             predict: Callable[[np.ndarray], np.ndarray]) -> Evaluation:
    """Popularity, retrieval only and two-stage as of ``split_ts``; ``model``: candidate sources as of then."""
    seen, truth = holdout_truth(dataset, split_ts)
    users = sorted(truth)
    k = max(CUTOFFS)
    popularity = dataset.interactions[dataset.interactions["ts"] < split_ts]["item_id"].value_counts()

    by_popularity = {u: [i for i, _ in picks] for u, picks in popularity_ranking(popularity, users, seen, k).items()}

    candidates = generate(model, requests_as_of(dataset.interactions, users, split_ts),
                          unavailable_rows(model, dataset, split_ts))
    ids = np.array(model.retrieval.item_ids, dtype=object)
    by_retrieval = {u: [ids[r] for r, _ in picks]
                    for u, picks in rank(candidates, retrieval_only_scores(candidates), k).items()}
    features = candidate_features(model.retrieval, store, candidates, split_ts)
    by_two_stage = {u: [ids[r] for r, _ in picks] for u, picks in rank(candidates, predict(features), k).items()}
    report = EvaluationReport(
        split_ts=split_ts,
        users=len(users),
        methods={
            "popularity": summarize(by_popularity, truth),
            "retrieval": summarize(by_retrieval, truth),
            "two-stage": summarize(by_two_stage, truth),
        },
    )
    return Evaluation(report=report, features=features, group_sizes=candidates.sizes)
