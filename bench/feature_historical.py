"""Benchmark: point-in-time retrieval of 1M entity rows x 20 features through Feast (DuckDB offline store).

Reference in the same run: the same join computed with pandas ``merge_asof``, which also checks the
result. Target (issue #3): Feast's retrieval <= 30 s on the 2-core machine.

    .venv/bin/python bench/feature_historical.py [--rows 1000000] [--entities 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.repo_config import RepoConfig
from feast.types import Float32

from feature_repo.store import historical

N_FEATURES = 20
T0 = pd.Timestamp("2026-01-01", tz="UTC")


def build(root: Path, n_rows: int, n_entities: int, seed: int) -> tuple[FeatureStore, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_feature_rows = n_rows  # as many feature rows as entity rows: ~10 snapshots per entity
    features = pd.DataFrame({
        "entity_id": rng.integers(0, n_entities, n_feature_rows).astype(str),
        "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 30 * 86_400, n_feature_rows), unit="s"),
        **{f"f{i:02d}": rng.standard_normal(n_feature_rows).astype(np.float32) for i in range(N_FEATURES)},
    }).drop_duplicates(["entity_id", "event_timestamp"])
    features.to_parquet(root / "features.parquet", index=False)
    entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="bench", entities=[entity], ttl=timedelta(0),
        schema=[Field(name=f"f{i:02d}", dtype=Float32) for i in range(N_FEATURES)],
        source=FileSource(name="bench_src", path=str(root / "features.parquet"), timestamp_field="event_timestamp",
                          file_format=ParquetFormat()),
    )
    config = RepoConfig(repo_path=root, project="bench_hist", provider="local", registry=str(root / "registry.db"),
                        offline_store={"type": "duckdb"}, online_store={"type": "sqlite", "path": str(root / "o.db")},
                        entity_key_serialization_version=3)
    store = FeatureStore(repo_path=str(root), config=config)
    store.apply([entity, view])
    entity_df = pd.DataFrame({
        "entity_id": rng.integers(0, n_entities, n_rows).astype(str),
        "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 35 * 86_400, n_rows), unit="s"),
    })
    return store, features, entity_df


def merge_asof_reference(features: pd.DataFrame, entity_df: pd.DataFrame) -> pd.DataFrame:
    left = entity_df.reset_index().sort_values("event_timestamp")
    right = features.sort_values("event_timestamp")
    joined = pd.merge_asof(left, right, on="event_timestamp", by="entity_id", direction="backward")
    return joined.sort_values("index").drop(columns="index").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    refs = [f"bench:f{i:02d}" for i in range(N_FEATURES)]
    with tempfile.TemporaryDirectory() as tmp:
        store, features, entity_df = build(Path(tmp), args.rows, args.entities, seed=0)
        feast_s, pandas_s = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = historical(store, entity_df, refs)
            feast_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            reference = merge_asof_reference(features, entity_df)
            pandas_s.append(time.perf_counter() - started)
        same = np.allclose(result["f00"].to_numpy(dtype=float, na_value=np.nan),
                           reference["f00"].to_numpy(dtype=float), equal_nan=True)
    print(f"entity rows {args.rows:,} x {N_FEATURES} features, {len(features):,} feature rows, "
          f"{args.entities:,} entities, {args.repeats} repeats")
    print(f"feast+duckdb historical: median {statistics.median(feast_s):.2f} s (min {min(feast_s):.2f}, "
          f"max {max(feast_s):.2f})")
    print(f"pandas merge_asof:       median {statistics.median(pandas_s):.2f} s (min {min(pandas_s):.2f}, "
          f"max {max(pandas_s):.2f})")
    print(f"ratio feast / pandas: {statistics.median(feast_s) / statistics.median(pandas_s):.2f}x; "
          f"results equal: {same}")


if __name__ == "__main__":
    main()
