"""Opening the Feast store from a YAML profile, and the three operations the system needs from it.

- ``apply``: register the definitions;
- ``materialize``: copy the latest snapshot of every entity into the online store (SQLite or Redis);
- ``historical``: Feast's point-in-time join, guarded. Feast neither keeps row order nor (on some
  offline stores) the row count, so every call carries a row id, restores the entity frame's
  order, and fails loudly if a row went missing instead of training on a silently shrunk set.
"""

from __future__ import annotations

import json
import string
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from feature_repo.definitions import TABLES, TIMESTAMP, definitions

# ibis (under the DuckDB offline store) warns about its own use of a deprecated DuckDB call on every
# query; importing feast resets warning filters, so this must come after the feast imports.
warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)

PROFILES_DIR = Path(__file__).parent / "profiles"
# Rewritten by every materialization, so serving processes know to drop cached feature values.
MATERIALIZED_MARKER = "materialized.json"
PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
ROW_ID = "__row_id"


class FeatureStoreError(RuntimeError):
    """The feature store refused an operation or returned something inconsistent."""


def render_profile(profile: str, features_dir: Path, project: str, redis_url: str,
                   redis_timeout_s: float | None = None) -> dict:
    """The profile's YAML with the work directory, project and Redis address filled in.

    ``redis_timeout_s`` bounds connecting and each reply (serving sets it; bulk materialization
    does not, since one pipelined write may take longer).
    """
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        raise FeatureStoreError(f"unknown feature store profile {profile!r}; choose one of {PROFILES}")
    host_port = redis_url.removeprefix("redis://")
    host_port, _, db = host_port.partition("/")
    connection = host_port + (f",db={db}" if db else "")
    if redis_timeout_s is not None:
        connection += f",socket_timeout={redis_timeout_s},socket_connect_timeout={redis_timeout_s}"
    text = string.Template(path.read_text()).substitute(
        features_dir=str(features_dir.resolve()), project=project, redis_connection=connection
    )
    return yaml.safe_load(text)


def open_store(profile: str, features_dir: Path, project: str, redis_url: str,
               redis_timeout_s: float | None = None) -> FeatureStore:
    """A FeatureStore for the profile; also writes the resolved feature_store.yaml for the feast CLI."""
    config = render_profile(profile, features_dir, project, redis_url, redis_timeout_s)
    features_dir.mkdir(parents=True, exist_ok=True)
    (features_dir / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return FeatureStore(repo_path=str(features_dir), config=RepoConfig(repo_path=features_dir, **config))


def apply(store: FeatureStore, features_dir: Path) -> None:
    missing = [name for name, *_ in TABLES.values() if not (features_dir / name).exists()]
    if missing:
        raise FeatureStoreError(f"{features_dir}: missing feature tables {missing}; build features first")
    store.apply(definitions(features_dir))


def materialize(store: FeatureStore, start_ts: int, end_ts: int) -> None:
    """Load every view's latest row per entity with event time in [start_ts, end_ts] online."""
    store.materialize(
        start_date=datetime.fromtimestamp(start_ts, tz=UTC),
        end_date=datetime.fromtimestamp(end_ts, tz=UTC),
    )
    marker = Path(store.repo_path) / MATERIALIZED_MARKER
    marker.write_text(json.dumps({"start_ts": start_ts, "end_ts": end_ts, "at": time.time()}))


def historical(store: FeatureStore, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Point-in-time join of ``features`` onto ``entity_df`` (its keys + ``event_timestamp``).

    Returns one row per entity row, in the entity frame's order, with feature columns named as
    in the views (no view prefix). Raises FeatureStoreError if the store lost or added rows.
    """
    if TIMESTAMP not in entity_df.columns:
        raise FeatureStoreError(f"entity frame needs an {TIMESTAMP!r} column")
    frame = entity_df.reset_index(drop=True).copy()
    # Microsecond precision: the offline store's Arrow conversion refuses to drop nanoseconds.
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True).dt.floor("us")
    frame[ROW_ID] = range(len(frame))
    result = store.get_historical_features(entity_df=frame, features=features).to_df()
    if len(result) != len(frame) or result[ROW_ID].nunique() != len(frame):
        raise FeatureStoreError(
            f"point-in-time join returned {len(result)} rows for {len(frame)} entity rows; "
            "the offline store dropped or duplicated rows"
        )
    result = result.sort_values(ROW_ID).reset_index(drop=True)
    feature_columns = [ref.split(":", 1)[1] for ref in features]
    return pd.concat([entity_df.reset_index(drop=True), result[feature_columns]], axis=1)
