"""Reading a request's features from the online store (SQLite embedded, Redis in production).

One Feast call for the user (activity, seen items, real-time state), and item features for all
candidates through the in-process cache (``serving/item_cache.py``), which falls back to one Feast
call for the items it misses. Frames come back in the same column layout as the offline
point-in-time join, so the shared ``ranker_matrix`` turns either into the ranker's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from feast import FeatureStore

from feature_repo.definitions import (
    ITEM_ACTIVITY,
    ITEM_ATTRIBUTES,
    USER_ACTIVITY,
    USER_HISTORY,
    USER_REALTIME,
    feature_names,
    feature_refs,
)
from serving.item_cache import ItemFeatureCache

USER_FEATURES = feature_names(USER_ACTIVITY) + feature_names(USER_REALTIME)
ITEM_FEATURES = feature_names(ITEM_ACTIVITY) + feature_names(ITEM_ATTRIBUTES)


@dataclass(frozen=True)
class UserFeatures:
    values: dict  # feature name → value (None when the store has nothing)
    seen_items: set[str]  # batch history plus the items of real-time events


class OnlineFeatures:
    def __init__(self, store: FeatureStore, marker: Path | None = None, pinned_items: set[str] | None = None,
                 cache_ttl_s: float = 300.0):
        self.store = store
        self._user_refs = feature_refs(USER_ACTIVITY, USER_HISTORY, USER_REALTIME)
        self._item_refs = feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES)
        self.item_cache = ItemFeatureCache(self.fetch_items, ITEM_FEATURES, marker=marker, ttl_s=cache_ttl_s,
                                           pinned=pinned_items)

    def user(self, user_id: str) -> UserFeatures:
        row = self.store.get_online_features(features=self._user_refs, entity_rows=[{"user_id": user_id}]).to_dict()
        seen = set(row["u_seen_items"][0] or []) | set(row["rt_recent_items"][0] or [])
        return UserFeatures(values={name: row[name][0] for name in USER_FEATURES}, seen_items=seen)

    def items(self, item_ids: list[str]) -> pd.DataFrame:
        """Feature rows in the order of ``item_ids`` (missing items give nulls), cached."""
        return self.item_cache.get(item_ids)

    def fetch_items(self, item_ids: list[str]) -> pd.DataFrame:
        """Feature rows straight from the store: one Feast call, no cache."""
        if not item_ids:
            return pd.DataFrame(columns=ITEM_FEATURES)
        data = self.store.get_online_features(
            features=self._item_refs, entity_rows={"item_id": list(item_ids)}
        ).to_dict()
        return pd.DataFrame({name: data[name] for name in ITEM_FEATURES})

    def ping(self) -> None:
        """Raise if the online store cannot be read (used by readiness checks)."""
        self.store.get_online_features(features=self._user_refs[:1], entity_rows=[{"user_id": "__readyz__"}])
