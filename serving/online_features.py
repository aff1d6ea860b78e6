"""Reading a request's features from the online store (SQLite embedded, Redis in production).

One call for the user (activity features and the list of items already seen), one for all the
candidate items. The frames come back in the same column layout as the offline point-in-time
join, so the shared ``ranker_matrix`` turns either into the ranker's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from feast import FeatureStore

from feature_repo.definitions import (
    ITEM_ACTIVITY,
    ITEM_ATTRIBUTES,
    USER_ACTIVITY,
    USER_HISTORY,
    feature_names,
    feature_refs,
)

USER_FEATURES = feature_names(USER_ACTIVITY)
ITEM_FEATURES = feature_names(ITEM_ACTIVITY) + feature_names(ITEM_ATTRIBUTES)


@dataclass(frozen=True)
class UserFeatures:
    values: dict  # feature name → value (None when the store has nothing)
    seen_items: set[str]


class OnlineFeatures:
    def __init__(self, store: FeatureStore):
        self.store = store
        self._user_refs = feature_refs(USER_ACTIVITY, USER_HISTORY)
        self._item_refs = feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES)

    def user(self, user_id: str) -> UserFeatures:
        row = self.store.get_online_features(features=self._user_refs, entity_rows=[{"user_id": user_id}]).to_dict()
        seen = row.get("u_seen_items", [None])[0] or []
        return UserFeatures(values={name: row[name][0] for name in USER_FEATURES}, seen_items=set(seen))

    def items(self, item_ids: list[str]) -> pd.DataFrame:
        """Feature rows in the order of ``item_ids`` (missing items give nulls)."""
        if not item_ids:
            return pd.DataFrame(columns=ITEM_FEATURES)
        data = self.store.get_online_features(
            features=self._item_refs, entity_rows={"item_id": list(item_ids)}
        ).to_dict()
        return pd.DataFrame({name: data[name] for name in ITEM_FEATURES})

    def ping(self) -> None:
        """Raise if the online store cannot be read (used by readiness checks)."""
        self.store.get_online_features(features=self._user_refs[:1], entity_rows=[{"user_id": "__readyz__"}])
