"""Seconds-fresh user features: POST /feedback events pushed into the online store.

Batch features are as old as the last materialization; a user who just clicked an item must not
be shown it again on the next request. Each feedback event is queued here; one background thread
drains the queue in batches, reads the affected users' current real-time state from the online
store, folds the new events in (``training.features.realtime_state``, the same definition that
seeds the view from batch data) and writes all of them back with one Feast push.

One writer thread per process serialises updates of a user within the process. Micro-batching is
what keeps up with load: a Feast push costs ~7 ms of fixed overhead (Redis, 1 user) and ~10 ms for
50 users, so pushing per event takes most of a core at 100 events/s. The thread therefore collects
events for up to BATCH_WINDOW_S after the first one and pushes them together: at most that much
added latency, a fraction of the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from feature_repo.definitions import TIMESTAMP, USER_REALTIME, USER_REALTIME_PUSH, feature_refs
from serving.batching_worker import BatchingWorker
from training.features import realtime_state

MAX_BATCH = 500
BATCH_WINDOW_S = 0.05


@dataclass(frozen=True)
class InteractionEvent:
    user_id: str
    item_id: str
    ts: int


class RealtimeUpdater:
    def __init__(self, store: FeatureStore, clock: Callable[[], float], capacity: int = 10_000):
        self.store = store
        self.clock = clock
        self.failed = 0
        self.pushed = 0
        self._refs = feature_refs(USER_REALTIME)
        self._worker: BatchingWorker[InteractionEvent] = BatchingWorker(
            "realtime-features", self._push_batch, capacity, max_batch=MAX_BATCH, window_s=BATCH_WINDOW_S)

    @property
    def dropped(self) -> int:
        return self._worker.dropped

    def submit(self, event: InteractionEvent) -> bool:
        """Queue an event; False (counted in ``dropped``) when the queue is full."""
        return self._worker.submit(event)

    def close(self) -> None:
        self._worker.close()

    def _push_batch(self, events: list[InteractionEvent]) -> None:
        try:
            self._apply(events)
            self.pushed += len(events)
        except Exception:  # the store is down: the feedback log still has the events
            self.failed += len(events)

    def _apply(self, events: list[InteractionEvent]) -> None:
        users = sorted({e.user_id for e in events})
        current = self.store.get_online_features(features=self._refs, entity_rows={"user_id": users}).to_dict()
        # The row's event time is the push time, not the events' (clients may send past times, and
        # Redis ignores a row older than the one it holds); the events keep their own times.
        pushed_at = pd.Timestamp(self.clock(), unit="s", tz="UTC").floor("us")
        rows = []
        for i, user in enumerate(users):
            items = list(current["rt_recent_items"][i] or [])
            stamps = list(current["rt_recent_ts"][i] or [])
            for e in events:
                if e.user_id == user:
                    items.append(e.item_id)
                    stamps.append(e.ts)
            rows.append({"user_id": user, TIMESTAMP: pushed_at, **realtime_state(items, stamps)})
        self.store.push(USER_REALTIME_PUSH, pd.DataFrame(rows), to=PushMode.ONLINE)
