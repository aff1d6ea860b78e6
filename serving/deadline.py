"""Deadlines without handoffs: a request runs on one thread, its stages inline, and still answers on time.

A request's stages (store reads, FAISS search, ONNX scoring) take a millisecond or two each. Running
each on a worker thread under a timeout costs two thread wake-ups per stage, and on a loaded
2-core machine every wake-up can wait for a core: with the stages inline on the request thread,
interleaved runs at 200 requests/s gave p99 20.6 against 24.8 ms and 0.2 ms less CPU per request
(docs/performance.md). So deadlines are kept in three layers, none of which moves work between threads:

- **stage budgets** (:func:`within`): a stage's result counts only if the stage finished within its
  budget; otherwise the request takes the stage's fallback and the answer is marked ``degraded``.
  A late result is dropped even though it is there, so the answer never depends on how late it
  was, and the stages after an overrun do less (no ranking without candidates);
- **store reads** are bounded by the client's socket timeout (``serving/store_guard.py``);
- **the request deadline** catches a stage that does not come back at all (a CPU starved for
  seconds, a stuck lock): the event loop, which waits for the request anyway, answers with the
  popularity fallback when the deadline passes. Whoever answers first takes the request's
  :class:`Claim`; the other one's answer is dropped, so exactly one impression is logged.
"""

from __future__ import annotations

import threading
import time


def within(started: float, budget_s: float | None) -> bool:
    """Whether a stage that started at ``started`` (``time.perf_counter()``) is still within its
    budget now; None: no budget."""
    return budget_s is None or time.perf_counter() - started <= budget_s


class Claim:
    """The right to answer one request: the first :meth:`take` wins, every later one loses."""

    def __init__(self) -> None:
        self._token = threading.Lock()

    def take(self) -> bool:
        return self._token.acquire(blocking=False)

    @property
    def taken(self) -> bool:
        return self._token.locked()

