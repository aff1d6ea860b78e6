"""Reading a request's features from the online store (SQLite embedded, Redis in production).

One read for the user (activity, seen items, real-time state): on Redis one ``HMGET`` of the hash
Feast wrote (``serving/redis_rows.py``), otherwise one Feast call. Item features for all
candidates come through the in-process cache (``serving/item_cache.py``), which reads the items it
misses or refreshes in one call (pipelined ``HMGET`` commands on Redis, Feast otherwise). Columns
come back under the same names as the offline point-in-time join's, so the shared
``ranker_matrix`` turns either into the ranker's input.

Every store call of a request goes through a :class:`StoreGuard` (circuit breaker; on Redis the
request client's socket timeout is the deadline). When the store fails, reads never raise: the
user's last features read by this process (or empty defaults) and the cached item rows (or nulls)
come back marked ``degraded``.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass, replace
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
from serving.item_cache import ItemColumns, ItemFeatureCache
from serving.redis_rows import RedisReads
from serving.store_guard import StoreGuard, StoreUnavailable

USER_VIEWS = [USER_ACTIVITY, USER_HISTORY, USER_REALTIME]
ITEM_VIEWS = [ITEM_ACTIVITY, ITEM_ATTRIBUTES]
USER_FEATURES = feature_names(USER_ACTIVITY) + feature_names(USER_REALTIME)
ITEM_FEATURES = feature_names(ITEM_ACTIVITY) + feature_names(ITEM_ATTRIBUTES)


@dataclass(frozen=True)
class UserFeatures:
    values: dict  # feature name → value (None when the store has nothing)
    seen_items: set[str]  # batch history plus the items of real-time events
    degraded: bool = False  # the store failed: these are the last values read, or empty defaults


class OnlineFeatures:
    def __init__(self, store: FeatureStore, marker: Path | None = None, pinned_items: set[str] | None = None,
                 cache_ttl_s: float = 300.0, guard: StoreGuard | None = None, last_known_users: int = 100_000,
                 redis: RedisReads | None = None):
        self.store = store
        self.redis = redis  # the direct Redis reads of users and items; None: through Feast
        self.guard = guard or StoreGuard()
        self._user_refs = feature_refs(*USER_VIEWS)
        self._item_refs = feature_refs(*ITEM_VIEWS)
        self.item_cache = ItemFeatureCache(self._guarded_fetch, ITEM_FEATURES, marker=marker, ttl_s=cache_ttl_s,
                                           pinned=pinned_items)
        # user → their last features read, pickled: as bytes they hold no containers for the garbage
        # collector to traverse (kept as objects, 12k users' sets and lists made a full collection
        # pause the process ~100 ms); ~10 µs per request to pickle, unpickled only when the store fails
        self._last_known: OrderedDict[str, bytes] = OrderedDict()
        self._last_known_capacity = last_known_users

    def user(self, user_id: str) -> UserFeatures:
        """The user's features and seen items; on a store failure the last ones read, marked degraded."""
        try:
            features = self.guard.call(self.fetch_user, user_id)
        except StoreUnavailable:
            return self.last_known(user_id)
        self._last_known[user_id] = pickle.dumps(features, protocol=pickle.HIGHEST_PROTOCOL)
        self._last_known.move_to_end(user_id)
        if len(self._last_known) > self._last_known_capacity:
            self._last_known.popitem(last=False)
        return features

    def last_known(self, user_id: str) -> UserFeatures:
        """The user's last features read by this process, or empty defaults; marked degraded."""
        last = self._last_known.get(user_id)
        if last is None:
            return UserFeatures(values={}, seen_items=set(), degraded=True)
        return replace(pickle.loads(last), degraded=True)

    def fetch_user(self, user_id: str) -> UserFeatures:
        """The user's row straight from the store (one round trip), unguarded."""
        if self.redis is not None:
            row = self.redis.users.read(user_id)
        else:
            data = self.store.get_online_features(features=self._user_refs, entity_rows=[{"user_id": user_id}])
            row = {name: values[0] for name, values in data.to_dict().items()}
        seen = set(row["u_seen_items"] or []) | set(row["rt_recent_items"] or [])
        return UserFeatures(values={name: row[name] for name in USER_FEATURES}, seen_items=seen)

    def items(self, item_ids: list[str]) -> tuple[ItemColumns, bool]:
        """Feature columns in the order of ``item_ids`` (missing items give NaN), cached; and whether
        the store failed, so that some rows are NaN instead of their values."""
        return self.item_cache.get(item_ids)

    def _guarded_fetch(self, item_ids: list[str]) -> pd.DataFrame:
        return self.guard.call(self.fetch_items, item_ids)

    def fetch_items(self, item_ids: list[str], background: bool = False) -> pd.DataFrame:
        """Feature rows straight from the store, no cache: one pipelined read on Redis (on the
        background client for the cache's loads and refreshes), else one Feast call."""
        if not item_ids:
            return pd.DataFrame(columns=ITEM_FEATURES)
        if self.redis is not None:
            rows = self.redis.background_items if background else self.redis.items
            return pd.DataFrame(rows.read_many(list(item_ids)), columns=ITEM_FEATURES)
        data = self.store.get_online_features(
            features=self._item_refs, entity_rows={"item_id": list(item_ids)}
        ).to_dict()
        return pd.DataFrame({name: data[name] for name in ITEM_FEATURES})

    def warm_up(self, catalog: list[str] = ()) -> None:
        """Unguarded reads before serving: one user, so that the first request does not pay Feast's
        start-up (registry, connections) against its deadline, and the ``catalog`` items into the
        item cache. A store that is down now is left to the guard and to readiness."""
        try:
            self.fetch_user("__warm_up__")
            self.item_cache.load(list(catalog) or ["__warm_up__"], self._fetch_items_in_background)
        except Exception:  # noqa: BLE001 - readiness reports the store; requests degrade
            pass

    def _fetch_items_in_background(self, item_ids: list[str]) -> pd.DataFrame:
        return self.fetch_items(item_ids, background=True)

    def ping(self) -> None:
        """Raise if the online store cannot be read (readiness checks).

        Readiness asks whether the store answers at all, outside the breaker and not against one
        request's budget (a busy machine misses that now and then while the store is fine): on Redis
        a read on the background client (its socket timeout, no retries), else a Feast read.
        """
        if self.redis is not None:
            self.redis.background_items.read("__readyz__")
            return
        self.store.get_online_features(features=self._user_refs[:1], entity_rows=[{"user_id": "__readyz__"}])
