"""Per-stage deadlines: a stage that overruns its budget is abandoned, and the request falls back.

A request's stages (store reads, FAISS search, ONNX scoring) usually take a millisecond or two,
but any of them can stall: a store that stops answering, a CPU shared with a noisy neighbour. A
stage with a budget runs on a worker thread while the request thread waits at most the budget; on
overrun the request stops waiting, serves its fallback (defaults, popularity, retrieval order)
and marks the answer ``degraded``. The abandoned call finishes in the background and its result
is dropped. FAISS and ONNX Runtime release the GIL, so waiting costs the request nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


class StageOverrun(Exception):
    """The stage did not finish within its budget."""


class StageRunner:
    def __init__(self, threads: int = 8, name: str = "stage"):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def run(self, fn: Callable[..., T], budget_s: float | None, *args) -> T:
        """``fn(*args)``, or StageOverrun after ``budget_s`` seconds (None: no budget, run inline)."""
        if budget_s is None:
            return fn(*args)
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=budget_s)
        except FutureTimeout as exc:
            future.cancel()
            raise StageOverrun(f"{getattr(fn, '__name__', 'stage')} overran its {budget_s * 1000:g} ms budget") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
