"""The in-memory dataset every stage reads: interactions, users and items in one normalised schema.

Whatever the origin (the simulator, MovieLens, a user's own CSV/Parquet files), data enters the
system as a :class:`Dataset` and is stored in a data directory as three Parquet files. Keeping one
schema is what lets the feature pipeline, training and evaluation ignore where the data came from.

Normalised schema
-----------------
- ``interactions``: ``user_id`` (str), ``item_id`` (str), ``ts`` (int64 unix seconds, UTC),
  ``weight`` (float64, 1.0 unless given), optional ``rating`` (float64); sorted by ``ts``.
- ``users``: ``user_id`` (str) plus any numeric or categorical (str) feature columns.
- ``items``: ``item_id`` (str) plus any feature columns; the known ones are ``category`` (str),
  ``price`` (float64) and ``release_ts`` (int64 unix seconds).
- ``impressions`` (optional, the simulator writes it): ``user_id``, ``item_id``, ``ts``,
  ``position`` (1-based), ``clicked`` (bool): what was shown, so item CTR can be computed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
IMPRESSIONS_FILE = "impressions.parquet"
META_FILE = "meta.json"
# The category of an item whose category is missing or unknown.
UNKNOWN_CATEGORY = "unknown"


@dataclass
class Dataset:
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    impressions: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def start_ts(self) -> int:
        return int(self.interactions["ts"].min())

    @property
    def end_ts(self) -> int:
        return int(self.interactions["ts"].max())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.interactions.to_parquet(directory / INTERACTIONS_FILE, index=False)
        self.users.to_parquet(directory / USERS_FILE, index=False)
        self.items.to_parquet(directory / ITEMS_FILE, index=False)
        if self.impressions is not None:
            self.impressions.to_parquet(directory / IMPRESSIONS_FILE, index=False)
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> Dataset:
        if not (directory / INTERACTIONS_FILE).exists():
            raise FileNotFoundError(
                f"{directory}: no {INTERACTIONS_FILE}; run `recsys data generate` or `recsys data import`"
            )
        impressions_path = directory / IMPRESSIONS_FILE
        meta_path = directory / META_FILE
        return cls(
            interactions=pd.read_parquet(directory / INTERACTIONS_FILE),
            users=pd.read_parquet(directory / USERS_FILE),
            items=pd.read_parquet(directory / ITEMS_FILE),
            impressions=pd.read_parquet(impressions_path) if impressions_path.exists() else None,
            meta=json.loads(meta_path.read_text()) if meta_path.exists() else {},
        )

    def before(self, ts: int) -> Dataset:
        """The dataset as it was known strictly before ``ts`` (interactions and impressions only)."""
        impressions = self.impressions
        if impressions is not None:
            impressions = impressions[impressions["ts"] < ts]
        return Dataset(
            interactions=self.interactions[self.interactions["ts"] < ts],
            users=self.users,
            items=self.items,
            impressions=impressions,
            meta=self.meta,
        )
