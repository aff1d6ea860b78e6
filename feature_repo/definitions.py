"""Feast definitions: the entities, sources, feature views and the ranker's feature service.

Every feature view reads one Parquet table that the batch feature pipeline
(`training/features.py`) writes under the work directory's ``features/`` folder. Rows are
timestamped snapshots: a row at ``event_timestamp`` T holds what was known strictly before T, so
Feast's point-in-time join can build leak-free training sets from them.

The tables are declared in a function of that folder only because Feast needs absolute source
paths (the DuckDB offline store resolves relative ones against the process's working directory).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Int64, String

TIMESTAMP = "event_timestamp"

USER_ACTIVITY = "user_activity"
USER_HISTORY = "user_history"
USER_REALTIME = "user_realtime"
USER_REALTIME_PUSH = "user_realtime_push"
ITEM_ACTIVITY = "item_activity"
ITEM_ATTRIBUTES = "item_attributes"
RANKER_SERVICE = "ranker"

USER_ACTIVITY_FIELDS = [
    Field(name="u_events_1d", dtype=Int64),
    Field(name="u_events_7d", dtype=Int64),
    Field(name="u_events_30d", dtype=Int64),
    Field(name="u_events_total", dtype=Int64),
    Field(name="u_last_event_ts", dtype=Int64),
    # Share of the user's interactions per item category, indexed by ``i_category_idx``.
    Field(name="u_category_share", dtype=Array(Float32)),
]
USER_HISTORY_FIELDS = [Field(name="u_seen_items", dtype=Array(String))]
# Updated within seconds from POST /feedback through the push source (batch rows seed them).
USER_REALTIME_FIELDS = [
    Field(name="rt_recent_items", dtype=Array(String)),  # most recent first, at most RECENT_ITEMS
    Field(name="rt_recent_ts", dtype=Array(Int64)),  # their event times
    Field(name="rt_clicks_1h", dtype=Int64),  # events in the hour before rt_last_event_ts
    Field(name="rt_last_event_ts", dtype=Int64),
]
RECENT_ITEMS = 50
ITEM_ACTIVITY_FIELDS = [
    Field(name="i_events_1d", dtype=Int64),
    Field(name="i_events_7d", dtype=Int64),
    Field(name="i_events_30d", dtype=Int64),
    Field(name="i_events_total", dtype=Int64),
    Field(name="i_impressions_7d", dtype=Int64),
]
ITEM_ATTRIBUTE_FIELDS = [
    Field(name="i_category_idx", dtype=Int64),
    Field(name="i_price", dtype=Float32),
    Field(name="i_release_ts", dtype=Int64),
]

# The table (Parquet file name) behind each feature view, and the entity key it is joined on.
TABLES = {
    USER_ACTIVITY: ("user_activity.parquet", "user_id", USER_ACTIVITY_FIELDS),
    USER_HISTORY: ("user_history.parquet", "user_id", USER_HISTORY_FIELDS),
    USER_REALTIME: ("user_realtime.parquet", "user_id", USER_REALTIME_FIELDS),
    ITEM_ACTIVITY: ("item_activity.parquet", "item_id", ITEM_ACTIVITY_FIELDS),
    ITEM_ATTRIBUTES: ("item_attributes.parquet", "item_id", ITEM_ATTRIBUTE_FIELDS),
}

# Every view's TTL (Feast: how far back the offline join looks; 0 = no bound). Activity snapshots are
# written only when a window count changes, and the last one (written when the entity's last event
# leaves the 30-day window) stays true until the entity acts again; attributes, the seen-items list
# and the real-time state are one row per entity. So no bound is correct: with one, a user idle for
# longer than it would look brand new.
TTL = timedelta(0)


def feature_names(view: str) -> list[str]:
    return [f.name for f in TABLES[view][2]]


def feature_refs(*views: str) -> list[str]:
    """``view:feature`` references, as Feast's retrieval calls take them."""
    return [f"{view}:{name}" for view in views for name in feature_names(view)]


def definitions(features_dir: Path) -> list:
    """All Feast objects of the repo, with sources under ``features_dir``."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    entities = {"user_id": user, "item_id": item}

    views = []
    for name, (file_name, key, fields) in TABLES.items():
        source = FileSource(
            name=f"{name}_source",
            path=str(features_dir.resolve() / file_name),
            timestamp_field=TIMESTAMP,
            file_format=ParquetFormat(),
        )
        if name == USER_REALTIME:
            source = PushSource(name=USER_REALTIME_PUSH, batch_source=source)
        views.append(
            FeatureView(
                name=name,
                entities=[entities[key]],
                ttl=TTL,
                schema=fields,
                source=source,
                online=True,
            )
        )
    by_name = {view.name: view for view in views}
    ranker = FeatureService(
        name=RANKER_SERVICE,
        features=[by_name[USER_ACTIVITY], by_name[ITEM_ACTIVITY], by_name[ITEM_ATTRIBUTES]],
        description="Everything the LightGBM ranker reads for one (user, candidate item) pair.",
    )
    return [user, item, *views, ranker]
