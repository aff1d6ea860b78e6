"""Online-store calls under a deadline, behind a circuit breaker: a slow or dead store must not make requests late.

A request reads the online store twice (the user, then the candidates the item cache misses). A
healthy Redis answers in well under a millisecond; a dead one refuses at once, but a stalled one
(paused process, full network buffer, failover) leaves the caller waiting on a socket. So every
store call runs with a deadline (``serving/deadline.py``): the request waits at most ``timeout_s``:

- a call that fails or overruns raises :class:`StoreUnavailable`, and the caller serves from
  cached or default features instead (the response is marked ``degraded``);
- after ``open_after`` failures in a row the breaker opens: for ``retry_after_s`` calls fail fast
  without touching the store (no request pays the timeout again, no thread piles up on a dead
  socket). One failure is not enough: on a busy machine a healthy store misses a 20 ms deadline
  now and then, and opening on it turned one late read into a second of degraded answers;
- after that, calls try the store again (each still bounded by ``timeout_s``), so service
  recovers by itself within about ``retry_after_s`` of the store coming back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from serving.deadline import StageOverrun, StageRunner

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The online store failed, overran the deadline, or the breaker is open."""


class StoreGuard:
    def __init__(self, timeout_s: float = 0.02, retry_after_s: float = 1.0, open_after: int = 3, threads: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.open_after = open_after
        self.clock = clock
        self.failures = 0  # calls that failed or overran
        self.short_circuited = 0  # calls refused while the breaker was open
        self._open_until = 0.0
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        self._runner = StageRunner(threads, name="online-store")

    @property
    def is_open(self) -> bool:
        return self.clock() < self._open_until

    def call(self, fn: Callable[..., T], *args) -> T:
        if self.is_open:
            self.short_circuited += 1
            raise StoreUnavailable(f"online store failing; next try in {self._open_until - self.clock():.2f} s")
        try:
            result = self._runner.run(fn, self.timeout_s, *args)
        except StageOverrun as exc:
            self._trip()
            raise StoreUnavailable(f"online store did not answer within {self.timeout_s * 1000:g} ms") from exc
        except Exception as exc:
            self._trip()
            raise StoreUnavailable(f"online store error: {exc}") from exc
        self._failures_in_a_row = 0
        return result

    def check(self, fn: Callable[..., T], timeout_s: float, *args) -> T:
        """Call ``fn`` under a deadline of its own, outside the breaker (readiness probes): an
        overrun raises StoreUnavailable but neither trips nor resets the breaker."""
        try:
            return self._runner.run(fn, timeout_s, *args)
        except StageOverrun as exc:
            raise StoreUnavailable(f"online store did not answer within {timeout_s:g} s") from exc

    def close(self) -> None:
        self._runner.close()

    def _trip(self) -> None:
        with self._lock:
            self.failures += 1
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.open_after:
                self._open_until = self.clock() + self.retry_after_s
