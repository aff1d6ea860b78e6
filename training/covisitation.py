"""Item co-visitation: which items users take close together in time, as sparse neighbour lists.

Two items are co-visited when one user interacts with both within ``window`` consecutive events.
Each item keeps its ``neighbours`` most co-visited items, and a row is normalised to sum to 1, so
a neighbour's weight reads as "the share of this item's co-visits that went to that item"; scores
stay comparable between a model built on one year of data and one built on ten.

Stored as compressed-row arrays (numpy only: serving loads it without scipy). Rows and columns are
positions in the retrieval model's ``item_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.retrieval import in_sorted


@dataclass(frozen=True)
class SeedScores:
    """Co-visitation scores of the items some seed items co-visit; every other item scores 0."""

    rows: np.ndarray  # item rows, ascending
    values: np.ndarray  # float32, one per row

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The scores of ``rows`` (float32; 0 for an item the seeds do not co-visit)."""
        out = np.zeros(len(rows), dtype=np.float32)
        found = in_sorted(rows, self.rows)
        out[found] = self.values[np.searchsorted(self.rows, rows[found])]
        return out


@dataclass(frozen=True)
class Covisitation:
    indptr: np.ndarray  # [n_items + 1]
    indices: np.ndarray  # neighbour item rows, most co-visited first within a row
    weights: np.ndarray  # float32, each non-empty row sums to 1

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    def scores(self, seeds: np.ndarray) -> SeedScores:
        """The mean weight each item gets from the ``seeds`` (item rows), for the items they co-visit.

        Sparse on purpose: 20 seeds touch at most 20 × ``neighbours`` items, so a request costs
        that, not a pass over the whole catalog. The sums run in seed order in float64 (a stable sort
        keeps each item's weights in seed order), so the float32 result is the same however the
        caller batches requests.
        """
        if len(seeds) == 0:
            return SeedScores(np.empty(0, np.int64), np.empty(0, np.float32))
        spans = list(zip(self.indptr[seeds].tolist(), self.indptr[np.asarray(seeds) + 1].tolist(), strict=True))
        neighbours = np.concatenate([self.indices[start:end] for start, end in spans])
        weights = np.concatenate([self.weights[start:end] for start, end in spans])
        order = np.argsort(neighbours, kind="stable")
        rows = neighbours[order]
        first = np.empty(len(rows), dtype=bool)
        first[:1] = True
        np.not_equal(rows[1:], rows[:-1], out=first[1:])
        sums = np.bincount(np.cumsum(first) - 1, weights=weights[order].astype(np.float64))
        return SeedScores(rows[first].astype(np.int64), (sums / len(seeds)).astype(np.float32))

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez_compressed(f, indptr=self.indptr, indices=self.indices, weights=self.weights)

    @classmethod
    def load(cls, path: Path) -> Covisitation:
        with np.load(path) as data:
            return cls(indptr=data["indptr"], indices=data["indices"], weights=data["weights"])


def build_covisitation(interactions: pd.DataFrame, item_row: dict[str, int], n_items: int, window: int,
                       neighbours: int) -> Covisitation:
    """Co-visitation from ``interactions`` (filter by time before calling); items outside ``item_row`` are skipped."""
    frame = interactions[["user_id", "item_id", "ts"]].copy()
    frame["row"] = frame["item_id"].map(item_row)
    frame = frame.dropna(subset=["row"]).sort_values(["user_id", "ts"], kind="stable")
    users = frame["user_id"].to_numpy()
    rows = frame["row"].to_numpy(dtype=np.int64)
    left, right = [], []
    for d in range(1, window + 1):
        same_user = users[:-d] == users[d:]
        a, b = rows[:-d][same_user], rows[d:][same_user]
        distinct = a != b
        left += [a[distinct], b[distinct]]
        right += [b[distinct], a[distinct]]
    a = np.concatenate(left) if left else np.empty(0, np.int64)
    b = np.concatenate(right) if right else np.empty(0, np.int64)
    pairs, counts = np.unique(a * n_items + b, return_counts=True)
    src, dst = pairs // n_items, pairs % n_items
    # Within each row, most co-visited first (ties by item row), then keep the first ``neighbours``.
    order = np.lexsort((dst, -counts, src))
    src, dst, counts = src[order], dst[order], counts[order]
    starts = np.searchsorted(src, np.arange(n_items + 1))
    rank = np.arange(len(src)) - starts[src]
    keep = rank < neighbours
    src, dst, counts = src[keep], dst[keep], counts[keep].astype(np.float64)
    totals = np.bincount(src, weights=counts, minlength=n_items)
    weights = (counts / np.maximum(totals[src], 1.0)).astype(np.float32)
    indptr = np.searchsorted(src, np.arange(n_items + 1)).astype(np.int64)
    return Covisitation(indptr=indptr, indices=dst.astype(np.int64), weights=weights)
