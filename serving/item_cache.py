"""An in-process cache of item features: the ranker reads ~300 items per request, users read 1.

Item features change only when a batch is materialized, yet a request needs hundreds of them:
through Feast that is one store round trip plus protobuf decoding for every item, every request
(~7 ms for 300 items on Redis here). The cache serves them from memory:

- the catalog is loaded at start-up (:meth:`ItemFeatureCache.load`), in bulk, so that requests
  do not fill it one miss at a time against their deadlines (on the 100k-item medium world the
  misses alone kept requests over budget for minutes);
- at most ``capacity`` items (the least recently used go first), each valid for ``ttl_s`` seconds. Once the catalog is
  loaded, an expired entry is still served and a background thread re-reads the due entries in one
  call every ``refresh_every_s`` (refresh-ahead: a request never waits on a re-read; reading a few
  expired items inside each request cost ~3 ms of its ~6). Loaded entries get fetch times spread
  over the last TTL, so they fall due a few at a time, not all at once;
- ``pinned`` items (the popular ones, which every request touches) are never evicted;
- every entry is dropped when the materialization marker changes (``recsys features materialize``
  rewrites it), so a new batch is visible at once instead of after the TTL, and the catalog is
  loaded again in the background;
- when the store is unavailable, expired rows are served as they were and rows never read are
  NaN, and the lookup says so.

Rows are kept in one float64 matrix (item features are numeric), so a lookup of 300 items is a
dict probe per item and vectorised freshness checks and copies, not a DataFrame build.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from serving.store_guard import StoreUnavailable

ItemColumns = dict[str, np.ndarray]  # feature name → float64 values, one per requested item (NaN: unknown)


class ItemFeatureCache:
    def __init__(
        self, fetch: Callable[[list[str]], pd.DataFrame], columns: list[str], marker: Path | None = None,
        capacity: int = 200_000, ttl_s: float = 300.0, pinned: set[str] | None = None,
        clock: Callable[[], float] = time.monotonic, refresh_every_s: float = 1.0,
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
        self._slots: dict[str, int] = {}  # item → its row in _values
        self._values = np.empty((0, len(columns)), dtype=np.float64)
        self._fetched_at = np.empty(0, dtype=np.float64)
        self._used_at = np.empty(0, dtype=np.int64)  # per slot: the lookup that last used it (LRU eviction)
        self._lookups = 0
        self._free: list[int] = []
        self._lock = threading.Lock()
        self._marker_seen = self._marker_version()
        self._marker_checked = clock()
        self._catalog: list[str] = []  # what load() read, read again after a materialization
        self._load_fetch: Callable[[list[str]], pd.DataFrame] | None = None
        self._due: set[str] = set()  # expired entries served as they are until refresh_due() re-reads them
        self._refresh_every_s = refresh_every_s
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def load(self, item_ids: list[str], fetch: Callable[[list[str]], pd.DataFrame], chunk: int = 2000,
             seed: int = 0) -> int:
        """Read ``item_ids`` (up to ``capacity``) into the cache through ``fetch`` (unguarded: no request
        waits on it), ``chunk`` items per store call. Returns how many were loaded."""
        ids = list(dict.fromkeys(item_ids))[: self.capacity]
        self._catalog, self._load_fetch = ids, fetch
        ages = np.random.default_rng(seed).uniform(0.0, self.ttl_s, len(ids))
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            rows = self._numeric(fetch(part))
            now = self.clock()
            with self._lock:
                for item, row, age in zip(part, rows, ages[start:start + chunk], strict=True):
                    self._put(item, row, now - age)
                self._evict()
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_loop, name="item-cache-refresh", daemon=True)
            self._refresher.start()
        return len(ids)

    def refresh_due(self) -> int:
        """Re-read the expired entries requests were served since the last call (one store call per
        2,000); entries the store cannot give now stay due. Returns how many were re-read."""
        with self._lock:
            due, self._due = list(self._due), set()
        done = 0
        for start in range(0, len(due), 2000):
            part = due[start:start + 2000]
            try:
                rows = self._numeric(self._load_fetch(part))
            except Exception:  # noqa: BLE001 - still served as they are; tried again next time
                with self._lock:
                    self._due.update(due[start:])
                break
            now = self.clock()
            with self._lock:
                for item, row in zip(part, rows, strict=True):
                    if item in self._slots:  # not evicted meanwhile
                        self._put(item, row, now)
            done += len(part)
        return done

    def close(self) -> None:
        self._stop.set()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_every_s):
            self.refresh_due()

    def get(self, item_ids: list[str]) -> tuple[ItemColumns, bool]:
        """Feature columns in the order of ``item_ids``, misses fetched in one call; and True if that
        call failed (expired rows are then served as they were, rows never read are NaN)."""
        now = self.clock()
        self._invalidate_if_materialized(now)
        out = np.full((len(item_ids), len(self.columns)), np.nan)
        missing: dict[str, list[int]] = {}
        expired: dict[str, int] = {}  # item → its slot, served if the store cannot refresh it
        with self._lock:
            slots = np.array(list(map(self._slots.get, item_ids, itertools.repeat(-1))), dtype=np.int64)
            cached = slots >= 0
            fresh = cached.copy()
            fresh[cached] = now - self._fetched_at[slots[cached]] < self.ttl_s
            # once the catalog is loaded, expired rows are served and refreshed ahead (refresh_due)
            served = cached if self._refresher is not None else fresh
            out[served] = self._values[slots[served]]
            for position in np.flatnonzero(served & ~fresh):
                self._due.add(item_ids[position])
            for position in np.flatnonzero(~served):
                item = item_ids[position]
                missing.setdefault(item, []).append(int(position))
                if cached[position]:
                    expired[item] = int(slots[position])
            self._lookups += 1
            self._used_at[slots[cached]] = self._lookups
        self.hits += len(item_ids) - sum(map(len, missing.values()))
        self.misses += len(missing)
        failed = False
        if missing:
            try:
                fetched = self._numeric(self.fetch(list(missing)))
            except StoreUnavailable:
                failed = True
                with self._lock:
                    for item, slot in expired.items():
                        if self._slots.get(item) == slot:  # not evicted and reused meanwhile
                            out[missing[item]] = self._values[slot]
            else:
                with self._lock:
                    for (item, positions), row in zip(missing.items(), fetched, strict=True):
                        out[positions] = row
                        self._put(item, row, now)
                    self._evict()
        return {name: out[:, j] for j, name in enumerate(self.columns)}, failed

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._due.clear()
            self._free = list(range(len(self._values)))

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def _put(self, item: str, row: np.ndarray, now: float) -> None:
        """Store one row (caller holds the lock), growing the matrix by doubling when it is full."""
        slot = self._slots.get(item)
        if slot is None:
            if not self._free:
                size = len(self._values)
                grown = max(1024, 2 * size)
                self._values = np.concatenate([self._values, np.empty((grown - size, len(self.columns)))])
                self._fetched_at = np.concatenate([self._fetched_at, np.zeros(grown - size)])
                self._used_at = np.concatenate([self._used_at, np.zeros(grown - size, dtype=np.int64)])
                self._free = list(range(grown - 1, size - 1, -1))
            slot = self._free.pop()
            self._used_at[slot] = self._lookups
        self._slots[item] = slot
        self._values[slot] = row
        self._fetched_at[slot] = now

    def _evict(self) -> None:
        """Drop least recently used unpinned entries beyond capacity, and a tenth of capacity more, so
        that the pass over every entry runs once per ``capacity / 10`` misses, not on each (caller
        holds the lock)."""
        if len(self._slots) <= self.capacity:
            return
        excess = len(self._slots) - self.capacity + self.capacity // 10
        items = [item for item in self._slots if item not in self.pinned]
        slots = np.array([self._slots[item] for item in items], dtype=np.int64)
        for i in np.argsort(self._used_at[slots], kind="stable")[:excess]:
            self._free.append(self._slots.pop(items[i]))

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
            if self._catalog and self._load_fetch is not None:
                threading.Thread(target=self._reload, name="item-cache-load", daemon=True).start()

    def _reload(self) -> None:
        # a store that fails now: requests read their misses themselves, under their deadlines
        with contextlib.suppress(Exception):
            self.load(self._catalog, self._load_fetch)
