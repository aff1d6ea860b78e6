"""End to end: `recsys up` brings up the stack as local processes, and Ctrl-C/SIGTERM takes it down.

Tiny simulator in a temporary work directory; Redis at 127.0.0.1:6379 under a project of its own
(deleted afterwards; the embedded SQLite store is used if no Redis answers); Prometheus on a free
port with its storage in the work directory and a 1 s scrape interval; the traffic generator on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
import redis
from conftest import ROOT, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "recsys-overview.json"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus binary is not installed (infra/ci/install-system-deps.sh installs Debian's package)")


def redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_for(check, what: str, timeout_s: float, process: subprocess.Popen, output: list[str]):
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"recsys up exited ({process.returncode}) waiting for {what}:\n" + "".join(output))
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:.0f} s:\n" + "".join(output[-40:]))
        time.sleep(0.5)


def query(prometheus: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def project():
    """A Feast project of its own on the shared Redis; its keys are deleted afterwards."""
    name = f"recsys_stack_{uuid.uuid4().hex[:8]}"
    yield name
    if redis_answers():
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=b"*" + name.encode(), count=1000):
            client.delete(key)


def test_recsys_up_runs_and_stops_the_whole_stack(tmp_path, project):
    home, api_port, prometheus_port = tmp_path / "home", free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_PROFILE"}  # let `up` find Redis itself
    env.update(RECSYS_PROJECT=project, RECSYS_REDIS_URL=REDIS_URL)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--home", str(home), "--size", "tiny", "--port", str(api_port),
         "--prometheus-port", str(prometheus_port), "--scrape-interval", "1s", "--traffic", "--traffic-rate", "10",
         "--traffic-duration", "120"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    api, prometheus = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prometheus_port}"
    try:
        wait_for(lambda: any("stack up" in line for line in output), "the stack", 150, process, output)
        log = "".join(output)
        for step in ("data generate", "train", "features materialize", "api", "prometheus", "traffic"):
            assert f"→ {step}: " in log, log
        with_redis = redis_answers()
        assert ("online store: redis" if with_redis else "online store: embedded") in log

        user = json.loads(next((home / "bundles").glob("*/user_ids.json")).read_text())[0]
        answer = httpx.get(f"{api}/recommend", params={"user_id": user, "k": 5}, timeout=10)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 5
        assert httpx.get(f"{api}/readyz", timeout=5).json()["status"] == "ready"

        # Prometheus scrapes the API (job recsys-api, local target) and has its metrics.
        up = wait_for(lambda: query(prometheus, 'up{job="recsys-api"} == 1'), "a scrape", 30, process, output)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{api_port}"
        wait_for(lambda: query(prometheus, 'sum(recsys_requests_total{endpoint="/recommend"}) > 5'),
                 "recsys_requests_total", 30, process, output)
        wait_for(lambda: query(prometheus, 'sum(recsys_realtime_feature_events_total{outcome="pushed"}) > 0'),
                 "real-time feature events from the traffic's clicks", 30, process, output)
        # The rules of infra/prometheus/rules are loaded and evaluate cleanly.
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {"recsys-api-alerts", "recsys-api-recording"} <= {g["name"] for g in groups}
        wait_for(lambda: all(r["health"] == "ok" for g in httpx.get(f"{prometheus}/api/v1/rules", timeout=5)
                             .json()["data"]["groups"] for r in g["rules"]), "healthy rules", 20, process, output)
        # Every dashboard panel shows data (the non-2xx series may be empty: no errors). Rule groups are
        # evaluated independently, so a panel of another group's rules may fill a cycle or two later.
        wait_for(lambda: query(prometheus, "recsys:stage_latency_seconds:p99_5m"), "recording rules", 20, process,
                 output)
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            if panel["type"] == "row":
                continue
            exprs = [t["expr"].replace("$__rate_interval", "10s") for t in panel["targets"]]
            wait_for(lambda exprs=exprs: any(query(prometheus, e) for e in exprs),
                     f"data in dashboard panel {panel['title']!r}", 20, process, output)
        if with_redis:
            keys = redis.Redis.from_url(REDIS_URL).scan_iter(match=b"*" + project.encode(), count=1000)
            assert sum(1 for _ in keys) > 100  # the tiny world's users and items, under this project only

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0, "".join(output[-20:])
        reader.join(timeout=5)
        assert "SIGTERM: stopping" in "".join(output)
        assert not port_open(api_port) and not port_open(prometheus_port)
        summary = json.loads(next(line for line in output if line.startswith('{"seconds"')))
        assert summary["recommend_requests"] > 0 and summary["responses"].get("recommend 200")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the supervisor's children die with it (PDEATHSIG)
            process.wait()
