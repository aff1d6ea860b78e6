"""The one function that turns stored features into the ranker's input matrix.

Training calls it on point-in-time-joined rows and the training timestamp; serving calls it on
online-store rows and the request time. Because both paths go through this code, a ranker feature
cannot be computed one way offline and another way online (training/serving skew by construction
is ruled out; skew in the stored values is what monitoring checks).

Missing values get explicit sentinels (-1 for "unknown") rather than NaN, so LightGBM and the
ONNX tree ensemble take the same branch for them.

Inputs are column mappings: training passes DataFrames from the point-in-time join; serving
passes dicts of numpy columns (no DataFrame is built per request), where the user's share
vector may come as one [n, categories] matrix. The pair features (two-tower and co-visitation
scores, recent popularity, source indicators) come from candidate generation
(``training/candidates.py``), which every path shares too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from training.features import DAY

RANKER_FEATURES = [
    "u_events_1d",
    "u_events_7d",
    "u_events_30d",
    "u_events_total",
    "u_days_since_last_event",
    "i_events_1d",
    "i_events_7d",
    "i_events_30d",
    "i_events_total",
    "i_trend_7d_vs_30d",
    "i_impressions_7d",
    "i_ctr_7d",
    "i_age_days",
    "i_price",
    "i_events_per_day",
    "ui_category_share",
]
PAIR_FEATURES = [
    "retrieval_score",
    "covis_score",
    "popular_count_30d",
    "in_ann",
    "in_covis",
    "in_popular",
]
RANKER_FEATURES += PAIR_FEATURES
UNKNOWN = -1.0
Columns = Mapping[str, Any]  # a DataFrame, or a dict of equal-length columns


def _column(frame: Columns, name: str, default: float, n: int) -> np.ndarray:
    if name not in frame:
        return np.full(n, default, dtype=np.float64)
    values = frame[name]
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False)
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _category_share(users: Columns, category_idx: np.ndarray) -> np.ndarray:
    """The user's share of interactions in the item's category, 0 when unknown."""
    out = np.zeros(len(category_idx), dtype=np.float64)
    shares = users["u_category_share"] if "u_category_share" in users else [None] * len(category_idx)
    if isinstance(shares, np.ndarray) and shares.ndim == 2:  # one share vector per row, as a matrix
        rows = np.flatnonzero((category_idx >= 0) & (category_idx < shares.shape[1]))
        out[rows] = shares[rows, category_idx[rows]]
        return out
    if isinstance(shares, np.ndarray) and shares.dtype.kind == "f":  # a user without a share vector (NaN)
        return out
    for row, (share, idx) in enumerate(zip(shares, category_idx, strict=True)):
        if share is not None and 0 <= idx < len(share):
            out[row] = share[int(idx)]
    return out


def _filled(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` with NaN replaced by ``fill`` (infinities pass through, unlike ``np.nan_to_num``,
    which costs ~15 µs of Python per call: a dozen calls per request)."""
    return np.where(np.isnan(values), fill, values)


def ranker_matrix(users: Columns, items: Columns, ts: np.ndarray | float, pairs: Columns) -> np.ndarray:
    """Row-aligned user, item and pair feature columns (one row per candidate pair) → float32 [n, F]."""
    missing = [name for name in PAIR_FEATURES if name not in pairs]
    if missing:
        raise ValueError(f"pair features missing: {missing}")
    n = len(pairs[PAIR_FEATURES[0]])
    if any(len(column) != n for frame in (users, items, pairs) for column in (frame[name] for name in frame)):
        raise ValueError("users, items and pair features must be row-aligned")
    now = np.broadcast_to(np.asarray(ts, dtype=np.float64), (n,))
    f = {}
    for name in ("u_events_1d", "u_events_7d", "u_events_30d", "u_events_total"):
        f[name] = _filled(_column(users, name, 0.0, n), 0.0)
    last = _column(users, "u_last_event_ts", np.nan, n)
    f["u_days_since_last_event"] = np.where(last > 0, (now - last) / DAY, UNKNOWN)
    for name in ("i_events_1d", "i_events_7d", "i_events_30d", "i_events_total", "i_impressions_7d"):
        f[name] = _filled(_column(items, name, 0.0, n), 0.0)
    f["i_trend_7d_vs_30d"] = (f["i_events_7d"] / 7.0) / (f["i_events_30d"] / 30.0 + 1.0 / 30.0)
    shown = f["i_impressions_7d"]
    f["i_ctr_7d"] = np.where(shown > 0, f["i_events_7d"] / np.maximum(shown, 1.0), UNKNOWN)
    release = _column(items, "i_release_ts", np.nan, n)
    f["i_age_days"] = np.where(np.isnan(release), UNKNOWN, (now - release) / DAY)
    f["i_events_per_day"] = f["i_events_total"] / np.maximum(f["i_age_days"], 1.0)
    f["i_price"] = _filled(_column(items, "i_price", np.nan, n), UNKNOWN)
    category_idx = _filled(_column(items, "i_category_idx", np.nan, n), -1).astype(np.int64)
    f["ui_category_share"] = _category_share(users, category_idx)
    for name in PAIR_FEATURES:
        f[name] = pairs[name]
    matrix = np.empty((n, len(RANKER_FEATURES)), dtype=np.float32)
    for column, name in enumerate(RANKER_FEATURES):
        matrix[:, column] = f[name]  # float64 → float32 on assignment, as astype would round
    return matrix
