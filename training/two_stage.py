"""Offline two-stage recommendation at one instant: candidates, their features, ranking.

This is the batch twin of the serving pipeline, built from the same pieces (``generate`` in
``training/candidates.py`` for candidates, ``ranker_matrix`` for features), and it is what builds
the ranker's training set, evaluates the models and answers ``recsys recommend-batch``. Because
training examples are made exactly the way requests are scored, what the ranker learns from is
what it will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd
from feast import FeatureStore

from training.features import DAY
from training.offline_features import features_as_of
from training.ranker_features import ranker_matrix


@dataclass
class RetrievalModel:
    """Item and user vectors with the ANN index over the items (index row i = ``item_ids[i]``)."""

    item_ids: list[str]
    item_vectors: np.ndarray
    user_ids: list[str]
    user_vectors: np.ndarray
    index: faiss.Index

    def __post_init__(self) -> None:
        self.item_row = {item: i for i, item in enumerate(self.item_ids)}
        self.item_id_array = np.array(self.item_ids, dtype=object)  # ids of many rows at once: item_id_array[rows]
        self.user_row = {user: i for i, user in enumerate(self.user_ids)}


@dataclass
class CandidateSet:
    """Candidates of many users, flattened: one row per (user, item) pair, grouped by user."""

    user_ids: list[str]
    sizes: np.ndarray
    item_rows: np.ndarray
    sources: np.ndarray  # the source that proposed each pair (training/candidates.py)
    pair_features: dict[str, np.ndarray]  # row-aligned features of the (user, item) pair

    @property
    def pair_users(self) -> np.ndarray:
        return np.repeat(np.array(self.user_ids, dtype=object), self.sizes)


def candidate_features(model: RetrievalModel, store: FeatureStore, candidates: CandidateSet, ts: int) -> np.ndarray:
    """The ranker matrix of every candidate pair, from features known at ``ts``."""
    item_ids = np.array(model.item_ids, dtype=object)[candidates.item_rows]
    users, items = features_as_of(store, candidates.user_ids, sorted(set(item_ids)), ts)
    user_rows = users.reindex(candidates.pair_users).reset_index(drop=True)
    item_rows = items.reindex(item_ids).reset_index(drop=True)
    return ranker_matrix(user_rows, item_rows, ts, candidates.pair_features)


def rank(candidates: CandidateSet, scores: np.ndarray, k: int) -> dict[str, list[tuple[int, float]]]:
    """Per user, the top ``k`` (item row, score) by ``scores`` (row-aligned with the candidates); -inf: left out."""
    ranked = {}
    start = 0
    for user, size in zip(candidates.user_ids, candidates.sizes, strict=True):
        rows = candidates.item_rows[start:start + size]
        s = scores[start:start + size]
        order = np.argsort(-s, kind="stable")[:k]
        order = order[np.isfinite(s[order])]
        ranked[user] = [(int(rows[o]), float(s[o])) for o in order]
        start += size
    return ranked


POPULAR_WINDOW_DAYS = 30
POPULAR_ITEMS = 1000


def recent_popularity(interactions: pd.DataFrame, until_ts: int) -> pd.Series:
    """Interaction counts of the most popular items over the last POPULAR_WINDOW_DAYS before ``until_ts``
    (ties by item id, so the order is reproducible)."""
    ts = interactions["ts"]
    recent = interactions[(ts >= until_ts - POPULAR_WINDOW_DAYS * DAY) & (ts < until_ts)]
    counts = recent["item_id"].value_counts().sort_index()
    return counts.sort_values(ascending=False, kind="stable").head(POPULAR_ITEMS)


def popularity_ranking(
    popularity: pd.Series, user_ids: list[str], seen: dict[str, set[str]], k: int
) -> dict[str, list[tuple[str, float]]]:
    """Most popular items not yet seen, per user. ``popularity``: item_id → count, any order."""
    ordered = popularity.sort_values(ascending=False, kind="stable")
    pool = list(zip(ordered.index, ordered.to_numpy(dtype=float), strict=True))
    result = {}
    for user in user_ids:
        had = seen.get(user, set())
        picks = []
        for item, count in pool:
            if item not in had:
                picks.append((item, count))
                if len(picks) == k:
                    break
        result[user] = picks
    return result

