"""An in-process cache of item features: the ranker reads ~300 items per request, users read 1.

Item features change only when a batch is materialized, yet a request needs hundreds of them:
through Feast that is one store round trip plus protobuf decoding for every item, every request
(~7 ms for 300 items on Redis here). The cache serves them from memory:

- LRU over at most ``capacity`` items, each entry valid for ``ttl_s`` seconds;
- ``pinned`` items (the popular ones, which every request touches) are never evicted;
- every entry is dropped when the materialization marker changes (``recsys features materialize``
  rewrites it), so a new batch is visible at once instead of after the TTL;
- when the store is unavailable, the rows it would have filled are nulls and the lookup says so;
  the cached rows are still served.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from serving.store_guard import StoreUnavailable


class ItemFeatureCache:
    def __init__(
        self, fetch: Callable[[list[str]], pd.DataFrame], columns: list[str], marker: Path | None = None,
        capacity: int = 200_000, ttl_s: float = 300.0, pinned: set[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetch = fetch
        self.columns = columns
        self.marker = marker
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.pinned = pinned or set()
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[float, tuple]] = OrderedDict()
        self._lock = threading.Lock()
        self._marker_seen = self._marker_version()
        self._marker_checked = clock()

    def get(self, item_ids: list[str]) -> tuple[pd.DataFrame, bool]:
        """Feature rows in the order of ``item_ids``, misses fetched in one call; and True if that
        call failed (the missed rows are then nulls, and nothing is cached for them)."""
        now = self.clock()
        self._invalidate_if_materialized(now)
        rows: dict[str, tuple] = {}
        with self._lock:
            for item in item_ids:
                entry = self._entries.get(item)
                if entry is not None and now - entry[0] < self.ttl_s:
                    rows[item] = entry[1]
                    self._entries.move_to_end(item)
        missing = [item for item in dict.fromkeys(item_ids) if item not in rows]
        self.hits += len(item_ids) - len(missing)
        self.misses += len(missing)
        failed = False
        if missing:
            try:
                fetched = self.fetch(missing)[self.columns].itertuples(index=False, name=None)
            except StoreUnavailable:
                rows.update(dict.fromkeys(missing, (None,) * len(self.columns)))
                failed = True
            else:
                with self._lock:
                    for item, values in zip(missing, fetched, strict=True):
                        rows[item] = values
                        self._entries[item] = (now, values)
                        self._entries.move_to_end(item)
                    self._evict()
        return pd.DataFrame.from_records([rows[item] for item in item_ids], columns=self.columns), failed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict(self) -> None:
        """Drop least recently used unpinned entries beyond capacity (caller holds the lock)."""
        excess = len(self._entries) - self.capacity
        for item in list(self._entries):
            if excess <= 0:
                break
            if item not in self.pinned:
                del self._entries[item]
                excess -= 1

    def _marker_version(self) -> float | None:
        try:
            return self.marker.stat().st_mtime_ns if self.marker else None
        except FileNotFoundError:
            return None

    def _invalidate_if_materialized(self, now: float) -> None:
        """Check the marker at most once a second (a stat call), and clear on change."""
        if self.marker is None or now - self._marker_checked < 1.0:
            return
        self._marker_checked = now
        version = self._marker_version()
        if version != self._marker_seen:
            self._marker_seen = version
            self.clear()
