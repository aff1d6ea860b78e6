"""Strong simple baselines the two-stage system has to beat, each recommending as of one instant.

- global popularity: most interacted-with items over all time before the instant;
- recent popularity: the same over the last 30 days (``recent_popularity``);
- item-kNN: items scored by their summed cosine similarity (columns of the binary user-item matrix)
  to the items the user had, computed as ``(x_u Xn^T) Xn`` with column-normalised ``Xn``, so the
  item x item similarity matrix is never materialised.

Every baseline excludes what the user had and what is not in the catalog yet, like the system.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.two_stage import popularity_ranking, recent_popularity


def global_popularity(interactions: pd.DataFrame, as_of: int, users: list[str], seen: dict[str, set[str]],
                      k: int) -> dict[str, list[str]]:
    counts = interactions[interactions["ts"] < as_of]["item_id"].value_counts().sort_index()
    return {u: [i for i, _ in picks] for u, picks in popularity_ranking(counts, users, seen, k).items()}


def recent_popular(interactions: pd.DataFrame, as_of: int, users: list[str], seen: dict[str, set[str]],
                   k: int) -> dict[str, list[str]]:
    counts = recent_popularity(interactions, as_of)
    return {u: [i for i, _ in picks] for u, picks in popularity_ranking(counts, users, seen, k).items()}


def item_knn(interactions: pd.DataFrame, as_of: int, users: list[str], seen: dict[str, set[str]],
             k: int) -> dict[str, list[str]]:
    """Users without history get nothing (the metric counts them as not served)."""
    before = interactions[interactions["ts"] < as_of]
    user_index = pd.Index(sorted(before["user_id"].unique()))
    item_index = pd.Index(sorted(before["item_id"].unique()))
    matrix = np.zeros((len(user_index), len(item_index)), dtype=np.float32)
    matrix[user_index.get_indexer(before["user_id"]), item_index.get_indexer(before["item_id"])] = 1.0
    normalised = matrix / np.maximum(np.sqrt(matrix.sum(axis=0)), 1.0)
    known = [u for u in users if u in user_index]
    items = item_index.to_numpy()
    result: dict[str, list[str]] = {u: [] for u in users}
    for user in known:
        # one user at a time: a batched product's rounding depends on which other users are in the
        # batch (BLAS blocking), which would let ties break differently for the same user
        user_scores = (matrix[user_index.get_loc(user)] @ normalised.T) @ normalised
        user_scores[item_index.get_indexer(list(seen.get(user, ())))] = -np.inf
        top = np.argsort(-user_scores, kind="stable")[:k]
        result[user] = [items[i] for i in top if np.isfinite(user_scores[i]) and user_scores[i] > 0]
    return result
