"""Replay logged requests against a server (load generation), and shadow-replay them offline on another bundle.

Load generation is **open loop**: every request has a planned send time, fixed before the run, and
is fired at that time whether or not earlier requests have answered. Latency is measured from the
planned time, not from when a connection happened to be free, so a slow server shows up as latency
instead of silently lowering the load (no coordinated omission). Three modes plan the times:

- ``rate``: a fixed arrival rate, ``i / R`` seconds after the start;
- ``speedup``: the logged inter-arrival times divided by a factor (the log's ``ts``);
- ``concurrency``: closed loop, ``C`` requests in flight at a time, as fast as the server answers
  (latency from the actual send; this mode measures capacity, not latency under a given load).

The client is a minimal HTTP/1.1 keep-alive pool on raw asyncio streams (uvloop when installed): a
general HTTP client spends too much CPU per request to sustain thousands of requests a second from
one core. The generator's own lateness (actual minus planned send time) is reported, so a run in
which the generator, not the server, was the bottleneck is visible.

Shadow replay (:func:`shadow_report`) recomputes offline the slates another bundle would have served
for the logged requests (its ranker scores on the logged candidates, ``monitoring.rescoring``) and
compares them with what was served; its report is deterministic (sorted keys, rounded floats), and
wall-clock timings are returned separately.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from serving.event_log import IMPRESSIONS_FILE, read_records

MODES = ("rate", "speedup", "concurrency")


@dataclass(frozen=True)
class LoggedRequest:
    user_id: str
    k: int
    context: dict
    ts: float | None


def load_requests(path: Path) -> list[LoggedRequest]:
    """The requests of an impression log (or logs directory), or of a request-only file (JSON lines
    with ``user_id`` and optional ``k``, ``context``, ``ts``), ordered by ``ts`` when present."""
    if path.is_dir():
        path = path / IMPRESSIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such log")
    out = []
    for number, record in enumerate(read_records(path), start=1):
        if record.get("user_id") is None:
            raise ValueError(f"{path}: record {number}: lacks 'user_id'")
        k = record.get("k", len(record.get("slate") or []) or 10)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"{path}: record {number}: k must be a positive integer, got {k!r}")
        context = record.get("context") or {}
        if not isinstance(context, dict):
            raise ValueError(f"{path}: record {number}: context must be an object")
        ts = record.get("ts")
        out.append(LoggedRequest(str(record["user_id"]), k, context, float(ts) if ts is not None else None))
    if not out:
        raise ValueError(f"{path}: no requests to replay")
    if all(r.ts is not None for r in out):
        out.sort(key=lambda r: r.ts)
    return out


def plan(requests: list[LoggedRequest], mode: str, value: float, duration: float | None) -> Iterator[tuple[float, int]]:
    """(planned offset in seconds, request index) for the open-loop modes; the log repeats when the
    duration outlasts it, and without a duration it is played once."""
    n = len(requests)
    if mode == "rate":
        limit = duration * value if duration is not None else n
        i = 0
        while i < limit:
            yield i / value, i % n
            i += 1
        return
    if mode != "speedup":
        raise ValueError(f"unknown open-loop mode {mode!r}")
    if any(r.ts is None for r in requests):
        raise ValueError("--speedup needs logged timestamps (ts) on every request")
    start = requests[0].ts
    offsets = [(r.ts - start) / value for r in requests]
    period = offsets[-1] + (offsets[-1] / (n - 1) if n > 1 else 1.0)
    lap = 0
    while True:
        for i, offset in enumerate(offsets):
            at = lap * period + offset
            if duration is None and lap > 0:
                return
            if duration is not None and at >= duration:
                return
            yield at, i
        lap += 1
        if duration is None:
            return


# --- a minimal HTTP/1.1 keep-alive client --------------------------------------------------------


class HttpError(Exception):
    """A malformed or truncated response."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """At most ``max_connections`` keep-alive connections to one host; requests beyond that wait
    for a free connection (the wait counts in their latency).

    A connection idle for ``idle_timeout_s`` is closed instead of reused: the server may be closing
    it at that very moment (uvicorn closes keep-alive connections idle for 5 s), and a request
    written into a closing connection fails with no answer. After a burst has opened many
    connections, the ones left idle would otherwise fail the next burst's requests.
    """

    def __init__(self, url: str, max_connections: int = 256, idle_timeout_s: float = 4.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://HOST[:PORT], got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: deque[asyncio.Future] = deque()

    async def _acquire(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()
            if time.monotonic() - connection.idle_since < self.idle_timeout_s:
                return connection
            connection.close()
            self.open -= 1
        if self.open >= self.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            connection = await waiter
            if connection is not None:
                return connection
        self.open += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self._forget()
            raise
        return _Connection(reader, writer)

    def _forget(self) -> None:
        """A connection closed: its slot goes to a waiter (who opens a new one) or back to the pool."""
        self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Connection, reusable: bool) -> None:
        if not reusable:
            connection.close()
            self._forget()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = time.monotonic()
        self.idle.append(connection)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        connection = await self._acquire()
        reusable = False
        try:
            head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            connection.writer.write(head.encode() + body)
            status, payload, reusable = await _read_response(connection.reader)
            return status, payload
        finally:
            self._release(connection, reusable)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HttpError("connection closed before a response") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise HttpError(f"bad status line {lines[0]!r}") from exc
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get("connection") != "close"
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append((await reader.readexactly(size + 2))[:-2])
        return status, b"".join(chunks), keep_alive
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), keep_alive
    return status, await reader.read(), False


# --- the load generator --------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # seconds, of answered requests (any status)
        self.lateness: list[float] = []  # seconds the generator sent after the planned time
        self.status: Counter[str] = Counter()
        self.transport: Counter[str] = Counter()
        self.sent = 0
        self.done = 0

    def report(self, mode: str, target: float | None, elapsed: float, send_window: float) -> dict:
        errors = {code: n for code, n in self.status.items() if not code.startswith("2")}
        return {
            "mode": mode,
            "target": target,
            "sent": self.sent,
            "completed": self.done,
            "elapsed_s": round(elapsed, 3),
            "send_rate": round(self.sent / send_window, 1) if send_window > 0 else None,
            "achieved_rate": round(self.done / elapsed, 1) if elapsed > 0 else None,
            "latency_ms": _percentiles(self.latencies),
            "generator_lateness_ms": _percentiles(self.lateness),
            "status": dict(sorted(self.status.items())),
            "errors": {"by_status": dict(sorted(errors.items())), "transport": dict(sorted(self.transport.items())),
                       "total": sum(errors.values()) + sum(self.transport.values())},
        }


def _percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ms = np.asarray(seconds) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)}


def _bodies(requests: list[LoggedRequest]) -> list[bytes]:
    return [json.dumps({"user_id": r.user_id, "k": r.k, "context": r.context}, separators=(",", ":")).encode()
            for r in requests]


async def _send(pool: HttpPool, path: str, body: bytes, started: float, stats: Stats, timeout: float) -> None:
    try:
        status, _ = await asyncio.wait_for(pool.request("POST", path, body), timeout)
        stats.status[str(status)] += 1
        stats.latencies.append(time.perf_counter() - started)
    except TimeoutError:
        stats.transport["timeout"] += 1
    except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
        stats.transport[type(exc).__name__] += 1
    finally:
        stats.done += 1


async def run_load(requests: list[LoggedRequest], url: str, mode: str = "rate", value: float = 100.0,
                   duration: float | None = None, path: str = "/recommend", max_connections: int = 256,
                   timeout: float = 10.0, progress: Callable[[Stats, float], None] | None = None) -> dict:
    """Replay ``requests`` against ``url``; returns the report (see :meth:`Stats.report`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if value <= 0:
        raise ValueError(f"the {mode} must be > 0, got {value}")
    loop = asyncio.get_running_loop()
    pool, stats, bodies = HttpPool(url, max_connections), Stats(), _bodies(requests)
    ticker = None
    if progress is not None:
        async def tick() -> None:
            while True:
                progress(stats, time.perf_counter() - start)
                await asyncio.sleep(0.25)
        ticker = loop.create_task(tick())
    start = time.perf_counter() + 0.01
    try:
        if mode == "concurrency":
            send_window = await _closed_loop(pool, path, bodies, int(value), duration, start, stats, timeout)
        else:
            send_window = await _open_loop(pool, path, bodies, plan(requests, mode, value, duration), start, stats,
                                           timeout)
    finally:
        if ticker is not None:
            ticker.cancel()
            progress(stats, time.perf_counter() - start)
        pool.close()
    return stats.report(mode, value, time.perf_counter() - start, send_window)


async def _open_loop(pool: HttpPool, path: str, bodies: list[bytes], planned: Iterator[tuple[float, int]],
                     start: float, stats: Stats, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    last = 0.0
    for offset, index in planned:
        at = start + offset
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        stats.lateness.append(max(0.0, now - at))
        stats.sent += 1
        last = offset
        task = loop.create_task(_send(pool, path, bodies[index], at, stats, timeout))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    return last if stats.sent > 1 else 0.0


async def _closed_loop(pool: HttpPool, path: str, bodies: list[bytes], concurrency: int, duration: float | None,
                       start: float, stats: Stats, timeout: float) -> float:
    total = len(bodies) if duration is None else math.inf
    counter = iter(range(10**12))

    async def worker() -> None:
        while True:
            n = next(counter)
            if n >= total or (duration is not None and time.perf_counter() - start >= duration):
                return
            stats.sent += 1
            stats.lateness.append(0.0)
            await _send(pool, path, bodies[n % len(bodies)], time.perf_counter(), stats, timeout)

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def run(coroutine):
    """Run a coroutine on uvloop when it is installed (lower per-request overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# --- shadow (counterfactual) replay --------------------------------------------------------------


def round_floats(value, digits: int = 6):
    """Floats rounded (NaN/inf as null), recursively: stable, byte-identical JSON."""
    if isinstance(value, float | np.floating):
        value = float(value)
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round_floats(v, digits) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def shadow_report(log: Path, bundle: Path, store, policy: str = "greedy", params: dict | None = None,
                  feedback: Path | None = None, n_boot: int = 500, seed: int = 0) -> tuple[dict, dict]:
    """What bundle ``bundle`` (with ``policy``) would have served on the logged requests, compared with
    what was served; returns (deterministic report, wall-clock timings)."""
    from scipy.stats import kendalltau, spearmanr

    from monitoring.ope import collect, counts_from_rows, evaluate
    from monitoring.rescoring import bundle_scores
    from serving.event_log import load_logs
    from serving.exploration import Candidates, make_policy
    from serving.model import load_model

    flat = load_logs(log, feedback)
    if flat.requests is None:
        raise ValueError("shadow replay needs impression logs with candidates (JSON lines), not flat rows")
    params = dict(params or {})
    target = make_policy(policy, params, counts=counts_from_rows(flat.rows))
    model = load_model(bundle)
    started = time.perf_counter()
    scores = bundle_scores(flat, model, store)
    rescoring_s = time.perf_counter() - started

    served = flat.rows.sort_values(["request_id", "position"]).groupby("request_id", sort=False)["item_id"].agg(list)
    overlaps, taus, spearmans, shifts, abs_shifts, served_shift = [], [], [], [], [], []
    started = time.perf_counter()
    for request, new_scores in zip(flat.requests.itertuples(index=False), scores, strict=True):
        shown = served.get(request.request_id, [])
        if not request.candidate_ids:
            continue
        k = int(request.k)
        slate = target.choose(Candidates(request.candidate_ids, new_scores), k, request.request_id, request.ts)
        chosen = [request.candidate_ids[r] for r in slate.rows]
        overlaps.append(len(set(chosen) & set(shown[:k])) / max(1, min(k, len(shown))))
        common = [item for item in shown if item in set(chosen)]
        if len(common) >= 2:
            tau = kendalltau([shown.index(i) for i in common], [chosen.index(i) for i in common]).statistic
            if math.isfinite(tau):
                taus.append(tau)
        old = np.asarray(request.candidate_scores, dtype=np.float64)
        if len(old) >= 2 and np.ptp(old) > 0 and np.ptp(new_scores) > 0:
            spearmans.append(spearmanr(old, new_scores).statistic)
        delta = new_scores - old
        shifts.append(float(delta.mean()))
        abs_shifts.append(float(np.abs(delta).mean()))
        position = {item: i for i, item in enumerate(request.candidate_ids)}
        served_shift += [float(delta[position[i]]) for i in shown if i in position]
    choosing_s = time.perf_counter() - started
    label = f"{Path(bundle).name} + {policy} {json.dumps(params, sort_keys=True)}"
    try:
        ope = evaluate(collect(flat, target, scores), label, n_boot=n_boot, seed=seed).to_dict()
    except ValueError as exc:  # e.g. items shown by a policy whose candidates were not all logged
        ope = {"target": label, "error": str(exc)}

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    report = {
        "log": str(log),
        "shadow_bundle": model.version,
        "policy": {"name": policy, "params": params},
        "requests": len(flat.requests),
        "overlap_at_k": {"mean": mean(overlaps), "min": min(overlaps) if overlaps else None,
                         "share_identical": mean([float(o == 1.0) for o in overlaps])},
        "rank_correlation": {"kendall_tau_common_items": mean(taus), "requests_with_2plus_common": len(taus),
                             "spearman_candidate_scores": mean(spearmans)},
        "score_shift": {"mean": mean(shifts), "mean_abs": mean(abs_shifts), "served_items_mean": mean(served_shift)},
        "ope": ope,
    }
    n = max(1, len(flat.requests))
    timings = {"rescoring_s": round(rescoring_s, 4), "per_request_ms": round((rescoring_s + choosing_s) * 1000 / n, 4)}
    return round_floats(report), timings


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"
