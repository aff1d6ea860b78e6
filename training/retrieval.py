"""Nearest-neighbour candidate search that never returns an item the user already had.

FAISS cannot filter per query, so the search over-fetches by the size of the largest exclusion
set and drops excluded rows afterwards. Used by the training-set builder, offline evaluation,
batch recommendation and the serving ANN source alike.
"""

from __future__ import annotations

import faiss
import numpy as np


def search_excluding(
    index: faiss.Index, queries: np.ndarray, exclude: list[set[int]], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: up to ``n`` (item rows, scores), best first, with ``exclude[q]`` removed.

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
        if exclude[q]:
            valid &= ~np.isin(rows[q], np.fromiter(exclude[q], dtype=np.int64))
        results.append((rows[q][valid][:n].astype(np.int64), scores[q][valid][:n]))
    return results
