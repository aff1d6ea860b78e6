"""User and item features as of one instant, from Feast's point-in-time join.

Training sets, offline evaluation and batch recommendation all score many users against many
items at a single time T. Joining users and items separately (|U| + |I| entity rows instead of
|U| x |I| pairs) gives the same values, because every pair shares T.
"""

from __future__ import annotations

import pandas as pd
from feast import FeatureStore

from feature_repo.definitions import (
    ITEM_ACTIVITY,
    ITEM_ATTRIBUTES,
    TIMESTAMP,
    USER_ACTIVITY,
    feature_refs,
)
from feature_repo.store import historical


def features_as_of(
    store: FeatureStore, user_ids: list[str], item_ids: list[str], ts: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(user features indexed by user_id, item features indexed by item_id) known at ``ts``."""
    when = pd.Timestamp(ts, unit="s", tz="UTC")
    users = pd.DataFrame({"user_id": list(user_ids), TIMESTAMP: when})
    items = pd.DataFrame({"item_id": list(item_ids), TIMESTAMP: when})
    user_frame = historical(store, users, feature_refs(USER_ACTIVITY))
    item_frame = historical(store, items, feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES))
    return (
        user_frame.drop(columns=[TIMESTAMP]).set_index("user_id"),
        item_frame.drop(columns=[TIMESTAMP]).set_index("item_id"),
    )
