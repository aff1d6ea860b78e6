"""The one function that turns stored features into the ranker's input matrix.

Training calls it on point-in-time-joined rows and the training timestamp; serving calls it on
online-store rows and the request time. Because both paths go through this code, a ranker feature
cannot be computed one way offline and another way online (training/serving skew by construction
is ruled out; skew in the stored values is what monitoring checks).

Missing values get explicit sentinels (-1 for "unknown") rather than NaN, so LightGBM and the
ONNX tree ensemble take the same branch for them.
"""

from __future__ import annotations

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
    "ui_category_share",
    "retrieval_score",
]
UNKNOWN = -1.0


def _column(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), default, dtype=np.float64)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _category_share(users: pd.DataFrame, category_idx: np.ndarray) -> np.ndarray:
    """The user's share of interactions in the item's category, 0 when unknown."""
    out = np.zeros(len(users), dtype=np.float64)
    shares = users["u_category_share"].to_numpy() if "u_category_share" in users.columns else [None] * len(users)
    for row, (share, idx) in enumerate(zip(shares, category_idx, strict=True)):
        if share is not None and 0 <= idx < len(share):
            out[row] = share[int(idx)]
    return out


def ranker_matrix(
    users: pd.DataFrame, items: pd.DataFrame, ts: np.ndarray | int, retrieval_score: np.ndarray
) -> np.ndarray:
    """Row-aligned user and item feature rows (one row per candidate pair) → float32 [n, F]."""
    if len(users) != len(items) or len(items) != len(retrieval_score):
        raise ValueError("users, items and retrieval_score must be row-aligned")
    now = np.broadcast_to(np.asarray(ts, dtype=np.float64), (len(items),))
    f = {}
    for name in ("u_events_1d", "u_events_7d", "u_events_30d", "u_events_total"):
        f[name] = np.nan_to_num(_column(users, name, 0.0), nan=0.0)
    last = _column(users, "u_last_event_ts", np.nan)
    f["u_days_since_last_event"] = np.where(last > 0, (now - last) / DAY, UNKNOWN)
    for name in ("i_events_1d", "i_events_7d", "i_events_30d", "i_events_total", "i_impressions_7d"):
        f[name] = np.nan_to_num(_column(items, name, 0.0), nan=0.0)
    f["i_trend_7d_vs_30d"] = (f["i_events_7d"] / 7.0) / (f["i_events_30d"] / 30.0 + 1.0 / 30.0)
    shown = f["i_impressions_7d"]
    f["i_ctr_7d"] = np.where(shown > 0, f["i_events_7d"] / np.maximum(shown, 1.0), UNKNOWN)
    release = _column(items, "i_release_ts", np.nan)
    f["i_age_days"] = np.where(np.isnan(release), UNKNOWN, (now - np.nan_to_num(release)) / DAY)
    f["i_price"] = np.nan_to_num(_column(items, "i_price", np.nan), nan=UNKNOWN)
    category_idx = np.nan_to_num(_column(items, "i_category_idx", np.nan), nan=-1).astype(np.int64)
    f["ui_category_share"] = _category_share(users, category_idx)
    f["retrieval_score"] = np.asarray(retrieval_score, dtype=np.float64)
    return np.column_stack([f[name] for name in RANKER_FEATURES]).astype(np.float32)
