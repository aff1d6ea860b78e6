"""The item feature cache, the store guard and real-time feature updates, on a real Feast store (SQLite and Redis)."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import redis

from feature_repo.definitions import RECENT_ITEMS, USER_REALTIME, feature_refs
from feature_repo.store import MATERIALIZED_MARKER, apply, materialize, open_store
from serving.item_cache import ItemFeatureCache
from serving.online_features import ITEM_FEATURES, ITEM_VIEWS, USER_VIEWS, OnlineFeatures
from serving.realtime_features import InteractionEvent, RealtimeUpdater
from serving.redis_rows import RedisReads, RedisRows
from serving.store_guard import StoreGuard, StoreUnavailable
from training.features import build_feature_tables, next_snapshot, realtime_state
from training.simulator import SimConfig, Simulator

REDIS_URL = "redis://127.0.0.1:6379/0"


class CountingFetch:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, ids: list[str]) -> pd.DataFrame:
        self.calls.append(list(ids))
        return pd.DataFrame({"a": [ID_VALUE.get(i, 0.5) for i in ids], "b": [len(i) for i in ids]})


ID_VALUE = {"x": 1.0, "y": 2.0, "z": 3.0, "hot": 4.0}


def test_cache_fetches_only_misses_in_one_call_and_keeps_order():
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"])
    first, _ = cache.get(["x", "y"])
    second, failed = cache.get(["y", "z", "x", "y"])
    assert not failed
    assert fetch.calls == [["x", "y"], ["z"]]
    assert list(second["a"]) == [2.0, 3.0, 1.0, 2.0]
    assert list(first["a"]) == [1.0, 2.0] and list(first["b"]) == [1.0, 1.0]
    assert (cache.hits, cache.misses) == (3, 3)


def test_cache_expires_entries_and_evicts_least_recently_used_but_never_pinned():
    now = [0.0]
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"], capacity=2, ttl_s=10, pinned={"hot"}, clock=lambda: now[0])
    cache.get(["hot", "x"])
    cache.get(["y"])  # over capacity: x (least recently used, not pinned) goes
    cache.get(["hot", "y"])
    assert fetch.calls == [["hot", "x"], ["y"]]
    cache.get(["x"])
    assert fetch.calls[-1] == ["x"]
    now[0] = 11.0  # every entry is older than the TTL
    cache.get(["hot"])
    assert fetch.calls[-1] == ["hot"]


def test_cache_over_capacity_evicts_a_tenth_more_at_once_least_recent_first():
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"], capacity=20, ttl_s=100)
    cache.get([f"i{n}" for n in range(20)])
    cache.get(["i0"])  # i0 is now the most recently used
    cache.get(["new"])  # 21 > 20: 1 + 2 entries go, the least recently used: i1, i2, i3
    cache.get(["i0", "i4", "new"])
    assert len(fetch.calls) == 2  # i0, i4 and new are still cached: nothing fetched again
    cache.get(["i1", "i2", "i3"])
    assert fetch.calls[-1] == ["i1", "i2", "i3"]


def test_cache_serves_cached_rows_and_nulls_when_the_store_fails():
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"])
    cache.get(["x"])

    def failing(ids):
        raise StoreUnavailable("down")

    cache.fetch = failing
    rows, failed = cache.get(["x", "y"])
    assert failed
    assert rows["a"][0] == 1.0 and np.isnan(rows["a"][1])
    cache.fetch = fetch
    rows, failed = cache.get(["y"])  # nothing was cached for y while the store was down
    assert not failed and rows["a"].tolist() == [2.0] and fetch.calls[-1] == ["y"]


def test_store_guard_opens_the_breaker_after_failures_in_a_row_and_closes_it_again():
    now = [0.0]
    guard = StoreGuard(retry_after_s=1.0, open_after=2, clock=lambda: now[0])
    with pytest.raises(StoreUnavailable, match="Timeout reading from socket"):
        guard.call(_time_out)  # what the request client raises when its socket timeout passes
    assert not guard.is_open  # one late answer is not an outage
    with pytest.raises(StoreUnavailable, match="error: refused"):
        guard.call(_refuse)
    with pytest.raises(StoreUnavailable, match="next try"):
        guard.call(lambda: "never called")
    assert (guard.failures, guard.short_circuited) == (2, 1)
    now[0] = 1.5  # retry_after_s later the store is tried again
    assert guard.call(lambda: "answer") == "answer"
    with pytest.raises(StoreUnavailable, match="error: refused"):
        guard.call(_refuse)
    assert guard.failures == 3 and not guard.is_open  # the success started the count again
    with pytest.raises(StoreUnavailable, match="error: refused"):
        guard.call(_refuse)
    assert guard.is_open


def _refuse():
    raise ConnectionRefusedError("refused")


def _time_out():
    raise redis.exceptions.TimeoutError("Timeout reading from socket")


def test_cache_drops_everything_when_the_materialization_marker_changes(tmp_path):
    now = [0.0]
    marker = tmp_path / MATERIALIZED_MARKER
    marker.write_text("{}")
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"], marker=marker, clock=lambda: now[0])
    cache.get(["x"])
    time.sleep(0.01)
    marker.write_text('{"again": 1}')
    now[0] = 2.0
    cache.get(["x"])
    assert fetch.calls == [["x"], ["x"]]


def test_realtime_state_keeps_the_latest_events_first_and_counts_the_last_hour():
    items = [f"i{n}" for n in range(RECENT_ITEMS + 5)]
    ts = [1_000_000 + 600 * n for n in range(len(items))]  # one event every 10 minutes
    state = realtime_state(items, ts)
    assert state["rt_recent_items"] == items[::-1][:RECENT_ITEMS]
    assert state["rt_last_event_ts"] == ts[-1]
    assert state["rt_clicks_1h"] == 6  # the last event and the five before it, strictly within the hour
    assert realtime_state([], []) == {"rt_recent_items": [], "rt_recent_ts": [], "rt_clicks_1h": 0,
                                      "rt_last_event_ts": 0}


@pytest.fixture(scope="module")
def world():
    return Simulator(SimConfig.preset("tiny", seed=5)).generate()


@pytest.fixture(params=["embedded", "redis"])
def materialized_store(request, world, tmp_path):
    project = f"rt_test_{uuid.uuid4().hex[:8]}"
    store = open_store(request.param, tmp_path, project, REDIS_URL)
    build_feature_tables(world).write(tmp_path)
    apply(store, tmp_path)
    materialize(store, 0, next_snapshot(world.end_ts))
    yield store
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=b"*" + project.encode()):
            client.delete(key)


def test_feedback_events_are_pushed_in_batches_and_readable(world, materialized_store):
    store = materialized_store
    user = world.interactions["user_id"].iloc[-1]
    before = OnlineFeatures(store).fetch_user(user)
    clock_ts = next_snapshot(world.end_ts) + 5.5
    updater = RealtimeUpdater(store, clock=lambda: clock_ts)
    for n in range(3):
        updater.submit(InteractionEvent(user, f"new-{n}", int(clock_ts) - 10 + n))
    updater.submit(InteractionEvent("brand-new-user", "i001", int(clock_ts)))
    updater.close()
    assert (updater.pushed, updater.failed, updater.dropped) == (4, 0, 0)

    after = OnlineFeatures(store).fetch_user(user)
    assert after.values["rt_recent_items"][:3] == ["new-2", "new-1", "new-0"]
    assert after.values["rt_recent_items"][3:] == before.values["rt_recent_items"][: RECENT_ITEMS - 3]
    assert {"new-0", "new-1", "new-2"} <= after.seen_items and before.seen_items <= after.seen_items
    assert after.values["u_events_total"] == before.values["u_events_total"]
    fresh = store.get_online_features(features=feature_refs(USER_REALTIME),
                                      entity_rows=[{"user_id": "brand-new-user"}]).to_dict()
    assert fresh["rt_recent_items"] == [["i001"]]


def test_the_direct_redis_read_of_a_user_equals_feasts(world, tmp_path):
    """serving/redis_rows.py reads the hash Feast writes: every user feature, for users with and
    without history, after a push of real-time events, and for a user the store never saw; every
    item feature, for catalog items and an item the store never saw."""
    project = f"rows_test_{uuid.uuid4().hex[:8]}"
    store = open_store("redis", tmp_path, project, REDIS_URL)
    build_feature_tables(world).write(tmp_path)
    apply(store, tmp_path)
    materialize(store, 0, next_snapshot(world.end_ts))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        clock_ts = next_snapshot(world.end_ts) + 5.5
        pushed = world.interactions["user_id"].iloc[-1]
        updater = RealtimeUpdater(store, clock=lambda: clock_ts)
        updater.submit(InteractionEvent(pushed, "new-0", int(clock_ts)))
        updater.close()
        key_version = store.config.entity_key_serialization_version
        item_rows = RedisRows(client, project, "item_id", ITEM_VIEWS, key_version)
        reads = RedisReads(users=RedisRows(client, project, "user_id", USER_VIEWS, key_version), items=item_rows,
                           background_items=item_rows)
        direct, through_feast = OnlineFeatures(store, redis=reads), OnlineFeatures(store)
        users = [*world.users["user_id"][:20], pushed, "never-seen"]
        for user in users:
            assert direct.fetch_user(user) == through_feast.fetch_user(user), user
        assert direct.fetch_user(pushed).values["rt_recent_items"][0] == "new-0"
        assert direct.fetch_user("never-seen").values["u_events_total"] is None
        assert sum(bool(direct.fetch_user(u).seen_items) for u in users) > 10  # real rows were compared
        items = [*world.items["item_id"][:200], "never-seen"]
        read, expected = direct.fetch_items(items), through_feast.fetch_items(items)
        pd.testing.assert_frame_equal(read, expected)
        pd.testing.assert_frame_equal(direct.fetch_items(items, background=True), expected)
        assert read.iloc[-1].isna().all() and read.iloc[:-1].notna().any(axis=None)
    finally:
        for key in client.scan_iter(match=b"*" + project.encode()):
            client.delete(key)


def test_online_item_reads_match_the_store_and_are_cached(world, materialized_store):
    features = OnlineFeatures(materialized_store)
    items = list(world.items["item_id"][:50])
    direct = features.fetch_items(items)
    (cached_once, _), (cached_twice, _) = features.items(items), features.items(items)
    expected = direct[ITEM_FEATURES].apply(pd.to_numeric).to_numpy(dtype=np.float64, na_value=np.nan)
    np.testing.assert_array_equal(np.column_stack([cached_once[name] for name in ITEM_FEATURES]), expected)
    np.testing.assert_array_equal(np.column_stack([cached_twice[name] for name in ITEM_FEATURES]), expected)
    assert features.item_cache.misses == 50 and features.item_cache.hits == 50
    assert json.loads((materialized_store.repo_path / MATERIALIZED_MARKER).read_text())["end_ts"] > 0


def test_a_loaded_catalog_is_served_from_memory_and_refreshed_ahead_a_few_at_a_time():
    now = [1000.0]
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"], ttl_s=100, clock=lambda: now[0], refresh_every_s=3600)
    catalog = [f"i{n}" for n in range(1000)]
    assert cache.load(catalog, fetch, chunk=400) == 1000
    assert [len(c) for c in fetch.calls] == [400, 400, 200]
    rows, failed = cache.get(catalog)
    assert not failed and len(fetch.calls) == 3  # every request item already loaded
    now[0] += 50  # half a TTL later about half the entries are due, not all of them at once
    rows, failed = cache.get(catalog)
    assert not failed and len(fetch.calls) == 3 and not np.isnan(rows["a"]).any()  # served, not re-read inline
    assert 400 < cache.refresh_due() < 600 and len(fetch.calls) == 4
    assert cache.refresh_due() == 0  # nothing due twice

    def failing(ids):
        raise StoreUnavailable("down")

    cache._load_fetch = cache.fetch = failing
    now[0] += 60  # the rest are due now, and the store is down: served as they were, and still due
    stale, failed = cache.get(catalog)
    assert not failed and not np.isnan(stale["a"]).any()
    assert cache.refresh_due() == 0
    fresh, failed = cache.get(["never-read"])
    assert failed and np.isnan(fresh["a"]).all()
    cache._load_fetch = cache.fetch = fetch
    assert cache.refresh_due() > 400
    cache.close()


def test_without_a_loaded_catalog_a_store_failure_serves_expired_rows():
    now = [0.0]
    fetch = CountingFetch()
    cache = ItemFeatureCache(fetch, ["a", "b"], ttl_s=10, clock=lambda: now[0])
    cache.get(["x"])
    cache.fetch = lambda ids: (_ for _ in ()).throw(StoreUnavailable("down"))
    now[0] = 11.0
    rows, failed = cache.get(["x", "y"])
    assert failed and rows["a"][0] == 1.0 and np.isnan(rows["a"][1])
