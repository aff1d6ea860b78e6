"""The HTTP API: thin routes over the serving modules; OpenAPI (at /docs) is the contract.

CPU work never runs on the event loop. ``/recommend`` hands each request to the runtime's request
threads (``RECSYS_REQUEST_THREADS``, default 1: at 100 requests/s on the 2-core machine one thread
used less CPU per request than four, 5.3 vs 5.7 ms, at the same p99; the threads share one GIL;
docs/performance.md), which run it start to finish, and holds its deadline
(``RECSYS_REQUEST_DEADLINE_MS``): a request not answered by then gets the popularity fallback from
the loop itself (serving/deadline.py). Answers are JSON encoded once by orjson (``response_json``),
without FastAPI re-validating its own output; ``response_model`` keeps the answer's schema in OpenAPI.
Other routes that do work (reload, readiness, metrics) are plain ``def`` functions in FastAPI's
thread pool. Request metrics and the body-size limit are one plain ASGI middleware: Starlette's
``@app.middleware("http")`` costs ~0.3 ms per request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feature_repo.store import MATERIALIZED_MARKER, open_store
from monitoring.drift import DriftCounts
from monitoring.drift_reference import DriftReference
from monitoring.metrics import ApiMetrics
from services import dashboard
from services.settings import Settings
from serving.deadline import Claim
from serving.event_log import FEEDBACK_FILE, IMPRESSIONS_FILE, FeedbackRecord, LogWriter
from serving.experiments import CURRENT, load_experiment
from serving.exploration import make_policy
from serving.model import ServingModel, load_model
from serving.online_features import ITEM_VIEWS, USER_VIEWS, OnlineFeatures
from serving.realtime_features import InteractionEvent, RealtimeUpdater
from serving.recommender import Recommendation, Recommender, StageBudgets
from serving.redis_rows import RedisReads, RedisRows
from serving.store_guard import StoreGuard
from training.bundle import DRIFT_REFERENCE, BundleError, latest_bundle
from training.features import next_snapshot

Id = Annotated[str | int, Field(description="User or item id; integers are treated as their decimal string.")]


MAX_BODY_BYTES = 64 * 1024
# Socket timeout of the Redis clients no request waits on (Feast's, the item cache's loads and
# refreshes, readiness): generous, so a busy moment does not abort a bulk read.
STORE_SOCKET_TIMEOUT_S = 1.0


class RecommendRequest(BaseModel):
    user_id: Id
    k: int = Field(10, ge=1, le=100)
    context: dict = Field(default_factory=dict)


class RecommendedItemOut(BaseModel):
    item_id: str
    score: float
    position: int
    propensity: float
    source: str


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str
    model_version: str
    policy: dict
    items: list[RecommendedItemOut]
    degraded: bool
    timings_ms: dict[str, float]


class FeedbackRequest(BaseModel):
    request_id: str
    user_id: Id
    item_id: Id
    event: str = Field("click", min_length=1, max_length=64)
    value: float = 1.0
    ts: float | None = Field(None, description="Unix seconds; the server's clock when omitted.")


class ReloadRequest(BaseModel):
    bundle: str | None = Field(None, description="Bundle directory; the newest in the work directory when omitted.")
    rollback: bool = Field(False, description="Switch back to the bundle served before the last reload.")


def data_clock(model: ServingModel, marker: Path) -> Callable[[], float]:
    """Serving time for simulated or historical data: the snapshot closing the bundle's data, as of
    the last materialization, running with the wall clock since then.

    Anchoring at the materialization (not at process start) keeps time moving forward across
    restarts and worker processes, which the online store needs: Redis ignores a pushed row that
    is not newer than the one it holds.
    """
    anchor = next_snapshot(model.manifest.data_end_ts)
    try:
        started = json.loads(marker.read_text())["at"]
    except (FileNotFoundError, KeyError, ValueError):
        started = time.time()
    return lambda: anchor + (time.time() - started)


@dataclass(frozen=True)
class DriftTracking:
    """One bundle's drift reference with this process's windows and the Prometheus counters per bin,
    swapped together on reload so a request never counts into another bundle's bins."""

    version: str
    counts: DriftCounts
    counters: list[list]

    def count(self, result: Recommendation) -> None:
        sample = result.drift_sample()
        if sample is None or result.model_version != self.version:
            return
        row, score = sample
        bins = self.counts.bins_of([*row.tolist(), score])
        self.counts.add(bins)
        for series, b in zip(self.counters, bins, strict=True):
            series[b].inc()


def read_drift_reference(model: ServingModel) -> DriftReference | None:
    """The bundle's drift reference; None for a bundle trained without one (no drift monitoring)."""
    path = model.path / DRIFT_REFERENCE
    return DriftReference.load(path) if DRIFT_REFERENCE in model.manifest.files else None


class Runtime:
    """Everything a request needs, built once per process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = ApiMetrics()
        store = open_store(settings.profile, settings.features_dir, settings.project, settings.redis_url,
                           redis_timeout_s=STORE_SOCKET_TIMEOUT_S)
        model = load_model(settings.bundle or latest_bundle(settings.bundles_dir))
        marker = self.marker = settings.features_dir / MATERIALIZED_MARKER
        guard = StoreGuard(settings.store_retry_after_s)
        redis = None
        if settings.profile == "redis":
            request_client, background_client = (
                Redis.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                               retry=Retry(NoBackoff(), 0))
                for timeout_s in (settings.store_timeout_ms / 1000, STORE_SOCKET_TIMEOUT_S))
            key_version = store.config.entity_key_serialization_version
            redis = RedisReads(
                users=RedisRows(request_client, settings.project, "user_id", USER_VIEWS, key_version),
                items=RedisRows(request_client, settings.project, "item_id", ITEM_VIEWS, key_version),
                background_items=RedisRows(background_client, settings.project, "item_id", ITEM_VIEWS, key_version))
        self.features = OnlineFeatures(store, marker=marker, pinned_items=set(model.popular_items), guard=guard,
                                       redis=redis)
        self.features.warm_up(model.retrieval.item_ids)
        budgets = StageBudgets(settings.retrieval_budget_ms / 1000, settings.ranking_budget_ms / 1000)
        self.impressions = LogWriter(settings.logs_dir / IMPRESSIONS_FILE)
        self.feedback = LogWriter(settings.logs_dir / FEEDBACK_FILE)
        self.clock = data_clock(model, marker) if settings.clock == "data" else time.time
        self.realtime = RealtimeUpdater(store, self.clock)
        self.metrics.expose_counts(
            "recsys_log_dropped_records", "Log records dropped because the writer queue was full.", "log",
            lambda: {"impressions": self.impressions.dropped, "feedback": self.feedback.dropped})
        self.metrics.expose_counts(
            "recsys_realtime_feature_events", "Feedback events by outcome of the real-time feature push.",
            "outcome", lambda: {"pushed": self.realtime.pushed, "dropped": self.realtime.dropped,
                                "failed": self.realtime.failed})
        cache = self.features.item_cache
        self.metrics.expose_counts("recsys_item_feature_cache_lookups", "Item feature cache lookups by result.",
                                   "result", lambda: {"hit": cache.hits, "miss": cache.misses})
        self.metrics.expose_counts(
            "recsys_online_store_failures", "Online-store calls that failed or overran, and calls skipped while "
            "the breaker was open.", "kind", lambda: {"failed": guard.failures, "skipped": guard.short_circuited})
        self.recommender = Recommender(model, self.features, self.impressions, self.clock,
                                       policy=make_policy(settings.policy, settings.policy_params),
                                       n_candidates=settings.n_candidates, log_candidates=settings.log_candidates,
                                       budgets=budgets)
        # A/B arms (serving/experiments.py): one recommender per arm, chosen by a stable hash of the user.
        self.experiment = load_experiment(settings.experiments) if settings.experiments else None
        self.arms: dict[str, Recommender] = {}
        for arm in self.experiment.arms if self.experiment else ():
            self.arms[arm.name] = Recommender(
                model if arm.bundle == CURRENT else load_model(Path(arm.bundle)), self.features, self.impressions,
                self.clock, policy=make_policy(arm.policy, arm.params), n_candidates=settings.n_candidates,
                log_candidates=settings.log_candidates, arm=arm.name, budgets=budgets)
        self.request_threads = ThreadPoolExecutor(settings.request_threads, thread_name_prefix="recommend")
        self.request_deadline_s = settings.request_deadline_ms / 1000
        self.previous_model: ServingModel | None = None
        self.metrics.set_model(model.version)
        self.drift: DriftTracking | None = None
        self._track_drift(model)

    def _track_drift(self, model: ServingModel) -> None:
        reference = read_drift_reference(model)
        previous = self.drift.counts.reference if self.drift else None
        if reference is None:
            self.drift = None
            return
        counters = self.metrics.set_drift_reference(reference, previous)
        self.drift = DriftTracking(model.version, DriftCounts(reference, self.clock), counters)

    def materialized_at(self) -> float | None:
        """Wall-clock time of the online store's last materialization (its marker), if any."""
        try:
            return float(json.loads(self.marker.read_text())["at"])
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return None

    async def answer(self, user_id: str, k: int, context: dict) -> Response:
        """The request run on a request thread, or the popularity fallback once the request deadline
        passes without an answer (a stage that does not come back). The thread's late answer is
        then dropped; exactly one of the two is logged (serving/deadline.py)."""
        recommender = self.recommender_for(user_id)
        claim = Claim()
        running = asyncio.get_running_loop().run_in_executor(
            self.request_threads, self._recommend, recommender, user_id, k, context, claim)
        done, _ = await asyncio.wait((running,), timeout=self.request_deadline_s)
        if not done and claim.take():  # on the loop: 0.12 ms p50, 0.25 ms p99 (medium world), only this late
            return self._respond(recommender, recommender.fallback(user_id, k, context))
        return await running

    def _recommend(self, recommender: Recommender, user_id: str, k: int, context: dict,
                   claim: Claim) -> Response | None:
        result = recommender.recommend(user_id, k, context, claim=claim)
        return None if result is None else self._respond(recommender, result)

    def _respond(self, recommender: Recommender, result: Recommendation) -> Response:
        """Count the answer in the metrics and drift windows, and encode it."""
        self.metrics.arm_recommendations.labels(arm=recommender.arm or "none").inc()
        self.metrics.observe_stages(result.timings_ms)
        if result.degraded:
            self.metrics.degraded.inc()
        for source, n in Counter(item.source for item in result.items).items():
            self.metrics.recommended_items.labels(source=source).inc(n)
        explored = sum(1 for item in result.items if item.propensity < 1.0)
        if explored:
            self.metrics.explored_items.inc(explored)
        drift = self.drift
        if drift is not None:
            drift.count(result)
        return Response(response_json(result), media_type="application/json")

    def recommender_for(self, user_id: str) -> Recommender:
        """The user's arm's recommender in an experiment, else the one recommender."""
        if self.experiment is None:
            return self.recommender
        return self.arms[self.experiment.assign(user_id).name]

    def swap_model(self, path: Path) -> tuple[str, str]:
        """Load and verify a bundle, then switch to it in one assignment. Returns (old, new) versions."""
        return self._switch_to(load_model(path))

    def roll_back(self) -> tuple[str, str]:
        """Switch back to the model served before the last switch (kept loaded for this)."""
        if self.previous_model is None:
            raise BundleError("no previous bundle to roll back to: nothing was reloaded yet")
        return self._switch_to(self.previous_model)

    def _switch_to(self, model: ServingModel) -> tuple[str, str]:
        # A request reads ``recommender.model`` once, so it runs on the old or the new model, never both.
        self.previous_model = self.recommender.model
        self.recommender.model = model
        for arm in self.experiment.arms if self.experiment else ():
            if arm.bundle == CURRENT:
                self.arms[arm.name].model = model
        self.metrics.set_model(model.version, self.previous_model.version)
        self._track_drift(model)
        return self.previous_model.version, model.version

    def close(self) -> None:
        self.request_threads.shutdown(wait=True, cancel_futures=True)  # requests not started are dropped
        self.features.item_cache.close()
        self.impressions.close()
        self.feedback.close()
        self.realtime.close()


def freeze_start_up_objects() -> None:
    """Move every object alive after start-up out of the garbage collector's reach (``gc.freeze``).

    Start-up leaves ~280k container objects that live as long as the process (the libraries, Feast's
    registry, the model); every full collection traversed them all, pausing the process for ~145 ms
    on the medium world: the largest latency spikes under load. Frozen objects are still freed by
    reference counting when dropped (a replaced bundle leaves no reference cycles); only cyclic
    garbage among them would stay.
    """
    gc.collect()
    gc.freeze()


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


class RequestMetrics:
    """Latency and count of every request by route, and the body-size limit: plain ASGI middleware.

    A body declared over MAX_BODY_BYTES is refused (413) before it is read; requests here are a
    few hundred bytes.
    """

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            refusal = JSONResponse(status_code=413, content={"detail": f"body over {MAX_BODY_BYTES} bytes"})
            await refusal(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "unmatched"
            metrics: ApiMetrics = scope["app"].state.runtime.metrics
            metrics.request_duration.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            metrics.sync_counts()


def response_json(result: Recommendation) -> bytes:
    """The /recommend answer as RecommendResponse's JSON (the OpenAPI contract), encoded by orjson
    straight from the dataclasses: 0.002 ms against 0.024 ms for building and dumping the pydantic
    models. ``tests/test_e2e_server.py`` checks answers against RecommendResponse."""
    return orjson.dumps({
        "request_id": result.request_id,
        "user_id": result.user_id,
        "model_version": result.model_version,
        "policy": result.policy,
        "items": result.items,
        "degraded": result.degraded,
        "timings_ms": result.timings_ms,
    })


def create_app(settings: Settings | None = None,
               runtime_factory: Callable[[Settings], Runtime] = Runtime) -> FastAPI:
    """The app; ``runtime_factory`` builds what requests use (a benchmark swaps in a naive one)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = runtime_factory(settings)
        freeze_start_up_objects()
        yield
        app.state.runtime.close()

    app = FastAPI(title="recsys", version="0.1.0", lifespan=lifespan,
                  description="Two-stage recommender: FAISS retrieval, ONNX LightGBM ranking, Feast features.")

    app.add_middleware(RequestMetrics)

    @app.get("/recommend", response_model=RecommendResponse)
    async def recommend_get(
        user_id: Annotated[str, Query(min_length=1, max_length=256)],
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        runtime: Runtime = Depends(get_runtime),
    ) -> Response:
        return await runtime.answer(user_id, k, {})

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend_post(body: RecommendRequest, runtime: Runtime = Depends(get_runtime)) -> Response:
        return await runtime.answer(str(body.user_id), body.k, body.context)

    @app.post("/feedback", status_code=202)
    def feedback(body: FeedbackRequest, runtime: Runtime = Depends(get_runtime)) -> dict:
        record = FeedbackRecord(
            request_id=body.request_id, ts=body.ts if body.ts is not None else runtime.clock(),
            user_id=str(body.user_id), item_id=str(body.item_id), event=body.event, value=body.value,
        )
        if not runtime.feedback.write(record):
            raise HTTPException(status_code=503, detail="feedback log is full; retry later")
        # events are free text: only clicks get their own series (bounded label values)
        runtime.metrics.feedback_events.labels(event="click" if record.event == "click" else "other").inc()
        if record.value > 0:  # a positive interaction: visible to the user's next request within seconds
            runtime.realtime.submit(InteractionEvent(record.user_id, record.item_id, int(record.ts)))
        # bandit policies (of the user's arm) learn from clicks
        observe = getattr(runtime.recommender_for(record.user_id).policy, "observe", None)
        if observe is not None and record.event == "click":
            observe(record.item_id, record.value)
        return {"status": "accepted"}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response, runtime: Runtime = Depends(get_runtime)) -> dict:
        try:
            runtime.features.ping()
        except Exception as exc:
            response.status_code = 503
            return {"status": "not ready", "reason": f"online store unreachable: {exc}"}
        return {"status": "ready", "model_version": runtime.recommender.model.version}

    @app.get("/metrics")
    def metrics(runtime: Runtime = Depends(get_runtime)) -> Response:
        at = runtime.materialized_at()
        if at is not None:
            runtime.metrics.features_materialized.set(at)
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    dashboard.add_routes(app, get_runtime)

    @app.post("/admin/reload")
    def reload(body: ReloadRequest, authorization: Annotated[str | None, Header()] = None,
               runtime: Runtime = Depends(get_runtime)) -> dict:
        token = runtime.settings.admin_token
        if not token or authorization != f"Bearer {token}":
            raise HTTPException(status_code=401, detail="a valid bearer token is required (RECSYS_ADMIN_TOKEN)")
        try:
            if body.rollback:
                previous, current = runtime.roll_back()
            else:
                previous, current = runtime.swap_model(
                    Path(body.bundle) if body.bundle else latest_bundle(runtime.settings.bundles_dir))
        except BundleError as exc:
            detail = f"bundle refused, still serving the current one: {exc}"
            raise HTTPException(status_code=422, detail=detail) from exc
        return {"model_version": current, "previous": previous}

    return app
