"""Property test: Feast's point-in-time join on the project's offline store (DuckDB) equals a brute-force join.

Random feature tables exercise every case that breaks point-in-time joins: several rows of an entity at
one event time differing only in ``created`` (the latest created wins), rows only after the entity row's
time, rows older than the TTL, entities with no rows, duplicate entity rows, and two feature views with
different TTLs. The join goes through ``feature_repo.store.historical`` (the guarded call training uses).
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.repo_config import RepoConfig
from feast.types import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_repo.store import historical

T0 = pd.Timestamp("2026-01-10 12:00", tz="UTC")
TTLS = {"short": timedelta(minutes=60), "long": timedelta(minutes=180)}
ENTITIES = [f"e{i}" for i in range(5)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    root = tmp_path_factory.mktemp("pit-repo")
    entity = Entity(name="thing", join_keys=["thing_id"], value_type=ValueType.STRING)
    objects = [entity]
    for name, ttl in TTLS.items():
        source = FileSource(name=f"{name}_src", path=str(root / f"{name}.parquet"), timestamp_field="event_ts",
                            created_timestamp_column="created", file_format=ParquetFormat())
        objects.append(FeatureView(name=name, entities=[entity], ttl=ttl, source=source,
                                   schema=[Field(name=f"{name}_value", dtype=Int64)]))
    config = RepoConfig(repo_path=root, project="pit_property", provider="local", registry=str(root / "registry.db"),
                        offline_store={"type": "duckdb"}, online_store={"type": "sqlite", "path": str(root / "o.db")},
                        entity_key_serialization_version=3)
    feature_store = FeatureStore(config=config)
    feature_store.apply(objects)
    feature_store.tables_root = root
    return feature_store


# A feature row: (entity, event minute, created minute offset); the value is the row's index.
feature_rows = st.lists(
    st.tuples(st.sampled_from(ENTITIES), st.integers(-300, 120), st.integers(0, 30)), min_size=1, max_size=25
)
# An entity row: an entity (e5 never has feature rows) and a minute.
entity_rows = st.lists(st.tuples(st.sampled_from([*ENTITIES, "e5"]), st.integers(-120, 120)), min_size=1,
                       max_size=15)


def table(rows: list[tuple[str, int, int]], name: str) -> pd.DataFrame:
    # created is unique per row (the index breaks ties) so "the latest created" is always well defined
    return pd.DataFrame({
        "thing_id": [r[0] for r in rows],
        "event_ts": [T0 + pd.Timedelta(minutes=r[1]) for r in rows],
        "created": [T0 + pd.Timedelta(minutes=r[1] + r[2], microseconds=i) for i, r in enumerate(rows)],
        f"{name}_value": list(range(len(rows))),
    }, columns=["thing_id", "event_ts", "created", f"{name}_value"])


def brute_force(features: pd.DataFrame, name: str, entity_df: pd.DataFrame) -> list:
    out = []
    for thing, when in zip(entity_df["thing_id"], entity_df["event_timestamp"], strict=True):
        eligible = features[(features["thing_id"] == thing) & (features["event_ts"] <= when)
                            & (features["event_ts"] >= when - TTLS[name])]
        best = eligible.sort_values(["event_ts", "created"]).tail(1)
        out.append(None if best.empty else int(best[f"{name}_value"].iloc[0]))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(short_rows=feature_rows, long_rows=feature_rows, requests=entity_rows)
def test_point_in_time_join_matches_brute_force(store, short_rows, long_rows, requests):
    tables = {"short": table(short_rows, "short"), "long": table(long_rows, "long")}
    for name, frame in tables.items():
        frame.to_parquet(store.tables_root / f"{name}.parquet", index=False)
    entity_df = pd.DataFrame({"thing_id": [r[0] for r in requests],
                              "event_timestamp": [T0 + pd.Timedelta(minutes=r[1]) for r in requests]})

    joined = historical(store, entity_df, ["short:short_value", "long:long_value"])

    assert len(joined) == len(entity_df)  # every entity row kept, duplicates included
    assert list(joined["thing_id"]) == list(entity_df["thing_id"])
    for name, frame in tables.items():
        got = [None if pd.isna(v) else int(v) for v in joined[f"{name}_value"]]
        assert got == brute_force(frame, name, entity_df)
        for value, when in zip(got, entity_df["event_timestamp"], strict=True):
            if value is not None:  # never a value from the future
                assert frame.loc[value, "event_ts"] <= when
