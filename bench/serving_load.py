"""Load benchmark of `/recommend`: the medium world, Redis online store, open-loop `recsys replay`.

    .venv/bin/recsys demo --no-serve --size medium --home /tmp/medium      # once
    .venv/bin/python bench/serving_load.py --home /tmp/medium [--rate 200 --duration 60]

What it runs, server and load generator on the same machine:

1. the medium world's features materialized into Redis under a project of its own;
2. ``recsys serve`` with 1 and then 2 worker processes: a warm-up, then ``recsys replay`` at
   ``--rate`` requests/s for ``--duration`` s (open loop: latency counts from the planned send
   time), and the per-stage timings of those requests from the server's own stage histograms
   (``/metrics``) and impression log;
3. with the better worker count, one server under rising rates (``--step-rates``, ``--duration-step``
   s each) until p99 passes 50 ms: the highest rate that keeps p99 within 50 ms;
4. threads that run requests in one worker (``RECSYS_REQUEST_THREADS``), 1 against 4, at
   ``--threads-rate``: the setting is chosen by this measurement;
5. the naive path in the same run: a server whose requests read the user and every candidate
   through Feast's ``get_online_features`` and score with LightGBM's native ``predict``, at the
   same rate, plus both paths one request at a time; the p99 ratios.

Prints a JSON report (``--report`` also writes it). Responses that fell back (``degraded``) are
counted, so a fast answer that skipped a stage cannot pass for a fast full answer. Each run also
reports the server's CPU time per request (all its processes and threads, from /proc), which is
what decides how much load 2 cores carry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECSYS = [sys.executable, "-m", "services.cli"]
REQUEST_TIMEOUT_S = 10  # the load generator's per-request timeout
STAGES = ("features", "retrieval", "ranking", "exploration", "logging")
# One native thread per library in every worker: processes scale, thread pools fight over 2 cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the naive path (a server variant; runs in its own process via --serve-naive) ----------------


def serve_naive(port: int) -> None:
    """The API with every request reading the user and all candidates through Feast and scoring with
    LightGBM: what serving looks like without the item cache and without ONNX."""
    import lightgbm as lgb
    import pandas as pd
    import uvicorn

    import services.serving_process  # noqa: F401  (first: keeps torch out, as in `recsys serve`)
    from services.api import Runtime, create_app
    from services.settings import Settings
    from serving.online_features import ITEM_FEATURES, OnlineFeatures, UserFeatures
    from training import bundle

    class FeastEveryRequest:
        def __init__(self, features: OnlineFeatures):
            self.features = features

        def user(self, user_id: str) -> UserFeatures:
            return self.features.fetch_user(user_id)

        def items(self, item_ids: list[str]) -> tuple[dict, bool]:
            frame = self.features.fetch_items(item_ids)
            return {name: pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                    for name in ITEM_FEATURES}, False

    class NativeLightGBM:
        def __init__(self, path: Path):
            self.booster = lgb.Booster(model_file=str(path))

        def score(self, features: np.ndarray) -> np.ndarray:
            return self.booster.predict(features, num_threads=1) if len(features) else np.empty(0)

    class NaiveRuntime(Runtime):
        def __init__(self, settings: Settings):
            super().__init__(settings)
            # every read through Feast's get_online_features, not the direct Redis reads
            self.features.redis = None
            model = self.recommender.model
            self.recommender.features = FeastEveryRequest(self.features)
            self.recommender.model = replace(model, ranker=NativeLightGBM(model.path / bundle.RANKER_NATIVE))

    uvicorn.run(create_app(Settings(), NaiveRuntime), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# --- running servers and load --------------------------------------------------------------------


class Server:
    def __init__(self, home: Path, env: dict, workers: int = 1, naive: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if naive:
            argv = [sys.executable, __file__, "--serve-naive", str(self.port)]
        else:
            argv = [*RECSYS, "serve", "--home", str(home), "--port", str(self.port), "--workers", str(workers)]
        self.process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env, "RECSYS_HOME": str(home)},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM; a server still working through a backlog after 60 s (the saturated naive one) is killed."""
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=60)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and every process under it, so far."""
        total, pending = 0.0, [self.process.pid]
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total


def replay(url: str, requests: Path, rate: float | None = None, duration: float = 10.0,
           concurrency: int | None = None) -> dict:
    """`recsys replay` (the project's open-loop generator) in its own process; its JSON report."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        load = ["--rate", str(rate)] if concurrency is None else ["--concurrency", str(concurrency)]
        subprocess.run([*RECSYS, "replay", str(requests), "--url", url, *load, "--duration", str(duration),
                        "--timeout", str(REQUEST_TIMEOUT_S), "--report", out.name], cwd=ROOT, check=True,
                       capture_output=True)
        return json.loads(Path(out.name).read_text())


def stage_histograms(url: str) -> dict[str, dict[str, float]]:
    """Per stage: cumulative bucket counts (le → count), sum and count, from /metrics."""
    stages: dict[str, dict[str, float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if not line.startswith("recsys_stage_duration_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        labels = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].split(","))
        stage = labels["stage"].strip('"')
        entry = stages.setdefault(stage, {})
        if name.startswith("recsys_stage_duration_seconds_bucket"):
            entry[labels["le"].strip('"')] = float(value)
        elif name.startswith("recsys_stage_duration_seconds_sum"):
            entry["sum"] = float(value)
        elif name.startswith("recsys_stage_duration_seconds_count"):
            entry["count"] = float(value)
    return stages


def stage_report(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Mean and bucket-interpolated p50/p99 (ms) per stage over the requests between two scrapes."""
    out = {}
    for stage in STAGES:
        a, b = after.get(stage, {}), before.get(stage, {})
        count = a.get("count", 0) - b.get("count", 0)
        if count <= 0:
            continue
        bounds = sorted((float(le), a[le] - b.get(le, 0)) for le in a if le not in ("sum", "count", "+Inf"))
        out[stage] = {"mean_ms": round((a["sum"] - b.get("sum", 0)) / count * 1000, 3), "requests": int(count),
                      **{f"p{q}_ms": _bucket_quantile(bounds, count, q / 100) for q in (50, 99)}}
    return out


def _bucket_quantile(bounds: list[tuple[float, float]], count: float, q: float) -> float | None:
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= q * count:
            share = (q * count - below) / max(cumulative - below, 1e-12)
            return round((lower + share * (upper - lower)) * 1000, 3)
        lower, below = upper, cumulative
    return None  # beyond the largest finite bucket


def logged_requests(log: Path, offset: int) -> list[dict]:
    with log.open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f if line.strip()]


def log_stage_report(records: list[dict]) -> dict:
    """Per-stage p50/p99 (ms) from the impression log's timings, and the share of degraded answers."""
    out: dict = {"requests": len(records), "degraded_share": round(
        sum(bool(r.get("degraded")) for r in records) / max(len(records), 1), 4)}
    for stage in STAGES:
        ms = np.array([r["timings_ms"].get(stage, 0.0) for r in records])
        if len(ms):
            out[stage] = {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                          "p99_ms": round(float(np.percentile(ms, 99)), 3)}
    return out


def measured_run(home: Path, env: dict, requests: Path, rate: float, duration: float, warmup: float,
                 workers: int = 1, naive: bool = False) -> dict:
    server = Server(home, env, workers, naive)
    try:
        return measure(server, home, requests, rate, duration, warmup, workers)
    finally:
        server.stop()


def measure(server: Server, home: Path, requests: Path, rate: float, duration: float, warmup: float,
            workers: int) -> dict:
    """A warm-up, then ``duration`` s at ``rate``: the replay report with per-stage timings and CPU."""
    log = home / "logs" / "impressions.jsonl"
    replay(server.url, requests, rate=rate, duration=warmup)
    time.sleep(0.2)  # the log writers' batch window
    before, offset, cpu = stage_histograms(server.url), log.stat().st_size, server.cpu_seconds()
    report = replay(server.url, requests, rate=rate, duration=duration)
    report["server_cpu_ms_per_request"] = round((server.cpu_seconds() - cpu) * 1000 / max(report["completed"], 1), 2)
    report["stages_from_metrics"] = stage_report(before, stage_histograms(server.url))
    if workers > 1:
        report["stages_from_metrics"]["note"] = "one scrape reaches one worker process"
    time.sleep(0.2)
    report["stages_from_log"] = log_stage_report(logged_requests(log, offset))
    return report


def unloaded(home: Path, env: dict, requests: Path, duration: float, naive: bool) -> dict:
    """One request at a time (closed loop, concurrency 1): latency without queueing."""
    server = Server(home, env, 1, naive)
    try:
        replay(server.url, requests, concurrency=1, duration=2)
        return replay(server.url, requests, concurrency=1, duration=duration)
    finally:
        server.stop()


def onnx_thread_tradeoff(model_path: Path, n_features: int, rows: int = 300, calls: int = 400) -> dict:
    """ONNX Runtime's intra-op threads, 1 vs 2, on one request's worth of candidates: the latency of a
    call alone, and the calls/s of two callers at once (what two concurrent requests see)."""
    import onnxruntime as ort

    features = np.random.default_rng(0).normal(size=(rows, n_features)).astype(np.float32)
    out = {}
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: features}
        for _ in range(20):
            session.run(None, feed)
        alone = []
        for _ in range(calls):
            t = time.perf_counter()
            session.run(None, feed)
            alone.append((time.perf_counter() - t) * 1000)
        with ThreadPoolExecutor(2) as pool:
            t = time.perf_counter()
            list(pool.map(session.run, [None] * calls, [feed] * calls))
            two_callers = calls / (time.perf_counter() - t)
        out[f"{threads}_threads"] = {"alone_p50_ms": round(float(np.percentile(alone, 50)), 3),
                                     "alone_p99_ms": round(float(np.percentile(alone, 99)), 3),
                                     "two_callers_calls_per_s": round(two_callers, 1)}
    return out


def p99_ratio_at_rate(naive: dict, served: dict) -> dict:
    """The naive path's p99 over the served path's (its best worker count) at the target rate. When
    more than 1% of the naive requests timed out, their p99 is beyond the timeout and the ratio is a
    lower bound: the timeout over the served p99."""
    served_p99 = served["latency_ms"]["p99"]
    if naive["errors"]["total"] > 0.01 * naive["sent"] or naive["latency_ms"]["p99"] is None:
        return {"p99_ratio_at_target_rate_at_least": round(REQUEST_TIMEOUT_S * 1000 / served_p99, 1)}
    return {"p99_ratio_at_target_rate": round(naive["latency_ms"]["p99"] / served_p99, 1)}


def summary(report: dict) -> dict:
    return {"target": report.get("target"), "achieved_rate": report["achieved_rate"],
            "latency_ms": report["latency_ms"], "errors": report["errors"],
            "generator_lateness_p99_ms": report["generator_lateness_ms"]["p99"],
            "server_cpu_ms_per_request": report.get("server_cpu_ms_per_request"),
            "degraded_share": report.get("stages_from_log", {}).get("degraded_share")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="Work directory of a built world (recsys demo --no-serve).")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--project", default="bench_serving")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--duration-step", type=float, default=20.0, help="Seconds per rate of the rate search.")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--step-rates", default="50,100,150,200,250,300,400")
    parser.add_argument("--threads-rate", type=float, default=100.0,
                        help="Rate of the 1 vs 4 request-threads comparison (1 worker).")
    parser.add_argument("--skip-materialize", action="store_true", help="Redis already holds the features.")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--serve-naive", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(args.serve_naive)
        return
    if args.home is None:
        parser.error("--home is required")

    from training.dataset import Dataset

    home = args.home.resolve()
    env = {**ONE_THREAD, "RECSYS_PROFILE": "redis", "RECSYS_REDIS_URL": args.redis_url,
           "RECSYS_PROJECT": args.project}
    started = time.monotonic()
    if not args.skip_materialize:
        for step in (("features", "apply"), ("features", "materialize")):
            subprocess.run([*RECSYS, *step, "--home", str(home)], cwd=ROOT, env={**os.environ, **env},
                           check=True, capture_output=True)
    users = Dataset.load(home / "data").users["user_id"].astype(str).to_numpy()
    requests = home / "bench_requests.jsonl"
    order = np.random.default_rng(0).permutation(len(users))
    requests.write_text("".join(json.dumps({"user_id": users[i], "k": 10}) + "\n" for i in order))

    out: dict = {"machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
                 "world": json.loads((home / "data" / "meta.json").read_text()).get("config", {}),
                 "rate": args.rate, "duration_s": args.duration}
    by_workers = {}
    for workers in (1, 2):
        by_workers[workers] = measured_run(home, env, requests, args.rate, args.duration, args.warmup, workers)
        print(f"{workers} worker(s) at {args.rate:g}/s: {json.dumps(summary(by_workers[workers]))}", flush=True)
    out["at_target_rate"] = {f"{w}_workers": report for w, report in by_workers.items()}
    best = min(by_workers, key=lambda w: by_workers[w]["latency_ms"]["p99"] or float("inf"))
    out["chosen_workers"] = best

    steps, highest = [], None
    server = Server(home, env, best)
    try:
        for rate in [float(r) for r in args.step_rates.split(",")]:
            report = measure(server, home, requests, rate, args.duration_step, args.warmup / 2, best)
            steps.append(summary(report))
            print(f"{best} worker(s) at {rate:g}/s: {json.dumps(steps[-1])}", flush=True)
            if (report["latency_ms"]["p99"] or float("inf")) > 50 or report["errors"]["total"]:
                break
            highest = rate
    finally:
        server.stop()
    out["rate_search"] = {"workers": best, "steps": steps, "highest_rate_with_p99_within_50ms": highest}

    by_threads = {}
    for threads in (1, 4):
        report = measured_run(home, {**env, "RECSYS_REQUEST_THREADS": str(threads)}, requests, args.threads_rate,
                              args.duration_step, args.warmup / 2, 1)
        by_threads[f"{threads}_request_threads"] = summary(report)
        print(f"1 worker, {threads} request thread(s) at {args.threads_rate:g}/s: "
              f"{json.dumps(by_threads[f'{threads}_request_threads'])}", flush=True)
    out["request_threads"] = {"rate": args.threads_rate, **by_threads}

    naive_env = {**env, "RECSYS_STORE_TIMEOUT_MS": "10000", "RECSYS_RETRIEVAL_BUDGET_MS": "10000",
                 "RECSYS_RANKING_BUDGET_MS": "10000", "RECSYS_REQUEST_DEADLINE_MS": "60000"}
    naive = measured_run(home, naive_env, requests, args.rate, args.duration_step, args.warmup / 2, 1, naive=True)
    print(f"naive at {args.rate:g}/s: {json.dumps(summary(naive))}", flush=True)
    fast_alone = unloaded(home, env, requests, args.duration_step, naive=False)
    naive_alone = unloaded(home, naive_env, requests, args.duration_step, naive=True)
    out["naive"] = {
        "at_target_rate_1_worker": naive,
        "one_at_a_time": {"served": fast_alone["latency_ms"], "naive": naive_alone["latency_ms"]},
        "p99_ratio_one_at_a_time": round(naive_alone["latency_ms"]["p99"] / fast_alone["latency_ms"]["p99"], 1),
        **p99_ratio_at_rate(naive, by_workers[best]),
    }
    from training.bundle import RANKER_ONNX, latest_bundle
    from training.ranker_features import RANKER_FEATURES

    out["onnx_threads"] = onnx_thread_tradeoff(latest_bundle(home / "bundles") / RANKER_ONNX, len(RANKER_FEATURES))
    print(f"onnx threads: {json.dumps(out['onnx_threads'])}", flush=True)
    out["wall_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
