"""Nearest-neighbour candidate search that never returns an item the user already had.

FAISS cannot filter per query, so the search over-fetches by the size of the largest exclusion
set and drops excluded rows afterwards. Used by the training-set builder, offline evaluation,
batch recommendation and the serving ANN source alike.

The two-tower score is also a ranker feature, and a tree compares it against thresholds: a value
one float32 ulp off can take the other branch. FAISS's inner products sum in their own order, which
differs from any numpy sum, so every place that feeds the ranker (training examples, serving,
rescoring logged requests) computes the score with :func:`pair_scores` instead.
"""

from __future__ import annotations

from collections.abc import Collection

import faiss
import numpy as np


def search_excluding(
    index: faiss.Index, queries: np.ndarray, exclude: list[Collection[int]], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: up to ``n`` (item rows, scores), best first, with ``exclude[q]`` (rows: a set or an
    array) removed.

    Fewer than ``n`` come back only when the index holds fewer than ``n`` allowed items.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    fetch = min(index.ntotal, n + max((len(e) for e in exclude), default=0))
    if fetch == 0 or len(queries) == 0:
        return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in range(len(queries))]
    scores, rows = index.search(queries, fetch)
    results = []
    for q in range(len(queries)):
        valid = rows[q] >= 0
        if len(exclude[q]):
            valid &= ~in_sorted(rows[q], np.unique(_as_rows(exclude[q])))
        results.append((rows[q][valid][:n].astype(np.int64), scores[q][valid][:n]))
    return results


def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each value is in ``sorted_set`` (ascending): ``np.isin`` for a set already sorted,
    a binary search per value instead of sorting both (~6x faster on a request's few hundred rows)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[position] == values


def _as_rows(rows: Collection[int]) -> np.ndarray:
    return rows if isinstance(rows, np.ndarray) else np.fromiter(rows, dtype=np.int64, count=len(rows))


def pair_scores(user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Two-tower scores of row-aligned (user, item) pairs, float32, the same bits wherever computed.

    Products of float32 values are exact in float64 and the float64 sum is rounded once, so the
    summation order cannot change the float32 result (short of a tie within 1e-16 of a rounding edge).
    """
    products = np.asarray(user_vectors, dtype=np.float64) * np.asarray(item_vectors, dtype=np.float64)
    return products.sum(axis=-1).astype(np.float32)
