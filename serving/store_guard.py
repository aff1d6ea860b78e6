"""Online-store calls behind a circuit breaker: a slow or dead store must not make requests late.

A request reads the online store twice (the user, then the candidates the item cache misses), on
its own thread. A healthy Redis answers in well under a millisecond; a dead one refuses at once,
but a stalled one (paused process, full network buffer, failover) leaves the caller waiting on a
socket. So the request's Redis client has the store budget as its socket timeout
(``RECSYS_STORE_TIMEOUT_MS``, no retries; ``services/api.py``), and every call goes through a
:class:`StoreGuard`:

- a call that fails or times out raises :class:`StoreUnavailable`, and the caller serves from
  cached or default features instead (the response is marked ``degraded``);
- after ``open_after`` failures in a row the breaker opens: for ``retry_after_s`` calls fail fast
  without touching the store (no request pays the timeout again). One failure is not enough: on
  a busy machine a healthy store misses a 20 ms deadline now and then, and opening on it turned one
  late read into a second of degraded answers;
- after that, calls try the store again (each still bounded by the socket timeout), so service
  recovers by itself within about ``retry_after_s`` of the store coming back.

The embedded profile's SQLite store is a local file with no timeout of its own; a read that never
returns is left to the request deadline (``serving/deadline.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The online store failed, timed out, or the breaker is open."""


class StoreGuard:
    def __init__(self, retry_after_s: float = 1.0, open_after: int = 3, clock: Callable[[], float] = time.monotonic):
        self.retry_after_s = retry_after_s
        self.open_after = open_after
        self.clock = clock
        self.failures = 0  # calls that failed or timed out
        self.short_circuited = 0  # calls refused while the breaker was open
        self._open_until = 0.0
        self._failures_in_a_row = 0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.clock() < self._open_until

    def call(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on the caller's thread, or StoreUnavailable."""
        if self.is_open:
            self.short_circuited += 1
            raise StoreUnavailable(f"online store failing; next try in {self._open_until - self.clock():.2f} s")
        try:
            result = fn(*args)
        except Exception as exc:
            self._trip()
            raise StoreUnavailable(f"online store error: {exc}") from exc
        self._failures_in_a_row = 0
        return result

    def _trip(self) -> None:
        with self._lock:
            self.failures += 1
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.open_after:
                self._open_until = self.clock() + self.retry_after_s
