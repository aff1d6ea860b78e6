"""Point-in-time correctness of the offline store the project uses (Feast + DuckDB), against brute force.

Feast's default file/dask offline store drops entity rows whose rows are all ineligible; the last
test runs it to show that the project's guard turns that into an error instead of a smaller
training set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from feast.repo_config import RepoConfig

from feature_repo.definitions import TIMESTAMP, TTL, USER_ACTIVITY, feature_refs
from feature_repo.store import FeatureStoreError, apply, historical, open_store, render_profile
from training.dataset import Dataset
from training.features import DAY, build_feature_tables
from training.simulator import SimConfig, Simulator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    features_dir = tmp_path_factory.mktemp("features")
    dataset = Simulator(SimConfig.preset("tiny", seed=3)).generate()
    tables = build_feature_tables(dataset)
    tables.write(features_dir)
    store = open_store("embedded", features_dir, "pit_test", "redis://127.0.0.1:6379/0")
    apply(store, features_dir)
    return dataset, tables, store, features_dir


def brute_force(table: pd.DataFrame, key: str, entity_df: pd.DataFrame, column: str, ttl_s: int) -> list:
    """Latest row with ts in [t - ttl, t] (ttl 0: no lower bound) per entity row, else None (Feast's semantics)."""
    out = []
    for entity, when in zip(entity_df[key], entity_df[TIMESTAMP], strict=True):
        eligible = table[TIMESTAMP] <= when
        if ttl_s:
            eligible &= table[TIMESTAMP] >= when - pd.Timedelta(seconds=ttl_s)
        rows = table[(table[key] == entity) & eligible]
        out.append(None if rows.empty else rows.sort_values(TIMESTAMP)[column].iloc[-1])
    return out


def test_historical_join_equals_brute_force(world):
    dataset, tables, store, _ = world
    rng = np.random.default_rng(0)
    users = dataset.users["user_id"].to_numpy()
    start, end = dataset.start_ts, dataset.end_ts
    n = 300
    entity_df = pd.DataFrame({
        "user_id": np.concatenate([rng.choice(users, n - 3), ["no-such-user", users[0], users[0]]]),
        TIMESTAMP: pd.to_datetime(np.concatenate([
            rng.integers(start - 2 * DAY, end + 2 * DAY, n - 3),
            [end, start - 10 * DAY, start - 10 * DAY],  # unknown entity; a duplicate pair before any row
        ]), unit="s", utc=True),
    })
    joined = historical(store, entity_df, feature_refs(USER_ACTIVITY))
    assert len(joined) == len(entity_df)
    assert (joined["user_id"].to_numpy() == entity_df["user_id"].to_numpy()).all()  # order kept
    for column in ("u_events_7d", "u_events_total", "u_last_event_ts"):
        expected = brute_force(tables.user_activity, "user_id", entity_df, column, int(TTL.total_seconds()))
        got = joined[column].tolist()
        for e, g in zip(expected, got, strict=True):
            assert (e is None and pd.isna(g)) or e == g


def test_no_feature_value_comes_from_after_the_row_time(world):
    dataset, _, store, _ = world
    when = dataset.start_ts + (dataset.end_ts - dataset.start_ts) // 2
    users = sorted(dataset.interactions["user_id"].unique())
    entity_df = pd.DataFrame({"user_id": users, TIMESTAMP: pd.Timestamp(when, unit="s", tz="UTC")})
    joined = historical(store, entity_df, feature_refs(USER_ACTIVITY)).set_index("user_id")
    before = dataset.interactions[dataset.interactions["ts"] < when].groupby("user_id")["ts"]
    last_before = before.max()
    for user in users:
        value = joined.loc[user, "u_last_event_ts"]
        if pd.isna(value):
            continue
        assert value <= when
        assert value <= last_before.get(user, -1)  # snapshots lag by up to a day, never lead
        assert joined.loc[user, "u_events_total"] <= before.size().get(user, 0)


def test_guard_rejects_a_join_that_dropped_rows(world):
    """Feast's default file (dask) store drops an entity row whose only rows are in its future."""
    dataset, _, _, features_dir = world
    config = render_profile("embedded", features_dir, "pit_test", "redis://127.0.0.1:6379/0")
    config["offline_store"] = {"type": "file"}
    dask_store = FeatureStore(repo_path=str(features_dir), config=RepoConfig(repo_path=features_dir, **config))
    user = dataset.interactions["user_id"].iloc[-1]
    entity_df = pd.DataFrame({"user_id": [user, user], TIMESTAMP: pd.to_datetime(
        [dataset.end_ts + DAY, dataset.start_ts - DAY], unit="s", utc=True)})
    with pytest.raises(FeatureStoreError, match="dropped or duplicated"):
        historical(dask_store, entity_df, feature_refs(USER_ACTIVITY))


def test_profiles_render_redis_address_and_paths(tmp_path):
    config = render_profile("redis", tmp_path, "proj", "redis://10.0.0.5:6380/3")
    assert config["online_store"] == {"type": "redis", "connection_string": "10.0.0.5:6380,db=3"}
    assert config["offline_store"] == {"type": "duckdb"}
    assert config["registry"] == str(tmp_path.resolve() / "registry.db")
    with pytest.raises(FeatureStoreError, match="unknown feature store profile"):
        render_profile("nope", tmp_path, "proj", "redis://x")


def test_apply_refuses_missing_tables(tmp_path):
    store = open_store("embedded", tmp_path, "empty", "redis://127.0.0.1:6379/0")
    with pytest.raises(FeatureStoreError, match="missing feature tables"):
        apply(store, tmp_path)


def test_dataset_round_trip(world, tmp_path):
    dataset = world[0]
    dataset.save(tmp_path / "d")
    loaded = Dataset.load(tmp_path / "d")
    pd.testing.assert_frame_equal(loaded.interactions, dataset.interactions)
    assert loaded.meta == dataset.meta
