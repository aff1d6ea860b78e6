"""A bounded queue drained in batches by one background thread: how serving does slow work off the request path.

The impression/feedback log writers and the real-time feature pusher share this shape: a request
hands over an item and returns at once; the thread takes what is queued (after the first item it
sleeps ``window_s`` and then takes what came meanwhile, so one write and one thread wake-up serve
many items) and hands the batch to
``handle``. A full queue refuses the item and counts it in ``dropped``: never a silent loss, never a
blocked request. ``close()`` drains everything queued before it, then stops the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class BatchingWorker(Generic[T]):
    def __init__(self, name: str, handle: Callable[[list[T]], None], capacity: int = 10_000,
                 max_batch: int = 1000, window_s: float = 0.0):
        self.handle = handle
        self.max_batch = max_batch
        self.window_s = window_s
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> bool:
        """Queue an item; False (counted in ``dropped``) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self.window_s and batch[-1] is not _STOP:
                # sleep through the window instead of waking on every item: one wake-up per batch
                time.sleep(self.window_s)
            while len(batch) < self.max_batch and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not _STOP]
            if items:
                self.handle(items)
            if batch[-1] is _STOP:
                return
