"""The faults a production recommender meets, against the real server process.

- the online store stalls (SIGSTOP) or dies (SIGKILL) and comes back: a dedicated redis-server on
  its own port, so the shared one is never touched;
- a stage overruns its budget;
- a bundle is swapped under load, rolled back, or refused;
- the answer is shorter than k only when there are not k unseen items to give.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from conftest import free_port, newest_manifest, recsys, running_server

from feature_repo.store import open_store
from monitoring.rescoring import bundle_scores
from serving.event_log import FlatLogs, load_logs
from serving.model import load_model
from training.dataset import Dataset

# The feature stage's own time while the store is out: the request client's socket timeout is
# RECSYS_STORE_TIMEOUT_MS (250 ms here, room for a busy CI machine); a client without one would wait
# on a stalled store forever.
WELL_WITHIN_BUDGET_MS = 600


class RedisServer:
    """A redis-server of this test's own, which the test may pause, kill and restart."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        redis.Redis.from_url(self.url).save()  # what a restarted server reloads
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def get(server, user: str, k: int = 10) -> httpx.Response:
    return httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": k}, timeout=30)


def metric(server, name: str) -> float:
    """Sum of a metric's samples in the /metrics text (0 when absent)."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def served_within_budget(server, users: list[str]) -> list[dict]:
    """Each user's answer: 200, k items, the feature stage well within its budget. Returns the bodies."""
    bodies = []
    for user in users:
        response = get(server, user)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) == 10
        waited = body["timings_ms"]["features"]
        assert waited < WELL_WITHIN_BUDGET_MS, f"the feature stage took {waited:.0f} ms"
        bodies.append(body)
    return bodies


def recovered_within(server, seconds: float, user: str) -> float:
    """Seconds until an answer is no longer degraded (fails after ``seconds``)."""
    started = time.monotonic()
    while True:
        response = get(server, user)
        assert response.status_code == 200, response.text
        if not response.json()["degraded"]:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"still degraded {seconds} s after the store came back"
        time.sleep(0.1)


def test_online_store_stalled_or_down_degrades_then_recovers_by_itself(copy_of_demo_home, own_redis):
    home = copy_of_demo_home
    env = {"RECSYS_PROFILE": "redis", "RECSYS_PROJECT": "resilience", "RECSYS_REDIS_URL": own_redis.url,
           "RECSYS_STORE_TIMEOUT_MS": "250", "RECSYS_STORE_RETRY_AFTER_S": "1", "RECSYS_REQUEST_DEADLINE_MS": "20000"}
    recsys("features", "apply", "--home", str(home), env=env)
    recsys("features", "materialize", "--home", str(home), env=env)
    dataset = Dataset.load(home / "data")
    users = list(dataset.users["user_id"][:20])
    history = dataset.interactions.groupby("user_id")["item_id"].agg(set)

    with running_server(home, env=env) as server:
        healthy = served_within_budget(server, users[:5])
        assert not any(body["degraded"] for body in healthy)

        os.kill(own_redis.process.pid, signal.SIGSTOP)  # stalled: connections hang, nothing answers
        stalled = served_within_budget(server, users)
        assert all(body["degraded"] for body in stalled)
        # users read before the stall keep their last features: still personal, still without seen items
        for user, body in zip(users[:5], stalled[:5], strict=True):
            assert {it["source"] for it in body["items"]} & {"ann", "covis"}
            assert not {it["item_id"] for it in body["items"]} & history.get(user, set())
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        os.kill(own_redis.process.pid, signal.SIGCONT)
        recovered_within(server, 5.0, users[0])

        own_redis.kill()  # dead: connections refused
        down = served_within_budget(server, users)
        assert all(body["degraded"] for body in down)
        own_redis.start()
        recovered_within(server, 5.0, users[1])
        assert httpx.get(f"{server.url}/readyz").status_code == 200

        assert metric(server, "recsys_degraded_responses_total") >= len(stalled) + len(down)
        assert metric(server, "recsys_online_store_failures_total") > 0
        statuses = {line for line in httpx.get(f"{server.url}/metrics").text.splitlines()  # /readyz's 503 is its answer
                    if line.startswith("recsys_requests_total{") and 'status="5' in line and "/readyz" not in line}
        assert not statuses, f"server errors: {statuses}"


def test_a_stage_over_its_budget_falls_back_instead_of_failing(copy_of_demo_home):
    home = copy_of_demo_home
    user = Dataset.load(home / "data").interactions["user_id"].iloc[-1]
    with running_server(home) as server:
        ranked = get(server, user).json()
    assert not ranked["degraded"]

    # 1 µs: no ONNX run fits, so the candidates are ordered by their two-tower scores: the ANN ones first
    with running_server(home, env={"RECSYS_RANKING_BUDGET_MS": "0.001"}) as server:
        unranked = get(server, user).json()
    assert unranked["degraded"]
    assert {it["source"] for it in unranked["items"]} == {"ann"}
    scores = [it["score"] for it in unranked["items"]]
    assert scores == sorted(scores, reverse=True)
    assert [it["item_id"] for it in unranked["items"]] != [it["item_id"] for it in ranked["items"]]

    # no FAISS search fits: the popularity fallback fills the slate
    with running_server(home, env={"RECSYS_RETRIEVAL_BUDGET_MS": "0.001"}) as server:
        popular = get(server, user).json()
    assert popular["degraded"] and len(popular["items"]) == 10
    assert {it["source"] for it in popular["items"]} == {"popular"}


def test_a_request_past_its_deadline_gets_the_popularity_fallback_and_one_impression(copy_of_demo_home):
    """A stage that does not come back: the SQLite online store held under an exclusive lock, so the
    request thread's user read waits in SQLite's busy handler (5 s). The event loop answers each
    request at its deadline; the thread's late answers are dropped, not logged a second time."""
    home = copy_of_demo_home
    dataset = Dataset.load(home / "data")
    user, other = dataset.interactions["user_id"].iloc[-1], dataset.interactions["user_id"].iloc[0]
    seen = set(dataset.interactions.loc[dataset.interactions["user_id"] == user, "item_id"])
    env = {"RECSYS_STORE_TIMEOUT_MS": "100", "RECSYS_RETRIEVAL_BUDGET_MS": "100", "RECSYS_RANKING_BUDGET_MS": "100",
           "RECSYS_REQUEST_DEADLINE_MS": "500"}
    with running_server(home, env=env) as server:
        healthy = get(server, user).json()  # the server now knows the user's features
        assert not healthy["degraded"]
        lock = sqlite3.connect(home / "features" / "online.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with ThreadPoolExecutor(2) as pool:  # the second waits behind the first for the request thread
                started = time.monotonic()
                late = list(pool.map(lambda u: get(server, u), [user, other]))
                waited = time.monotonic() - started
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert waited < 3.0, f"answers took {waited:.1f} s: the deadline did not hold"  # the read alone: 5 s
        for response in late:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["degraded"] and len(body["items"]) == 10
            assert {it["source"] for it in body["items"]} == {"popular"}
        assert not {it["item_id"] for it in late[0].json()["items"]} & seen  # the last features read still count
        time.sleep(6)  # the request thread comes back from SQLite and finds both requests answered
        after = get(server, user).json()
        assert not after["degraded"]
    answered = [healthy["request_id"], *(r.json()["request_id"] for r in late), after["request_id"]]
    logged = list(load_logs(home / "logs").requests["request_id"])
    assert sorted(logged) == sorted(answered)


def test_k_items_or_as_many_as_there_are_to_give(copy_of_demo_home):
    home = copy_of_demo_home
    dataset = Dataset.load(home / "data")
    user = dataset.interactions["user_id"].iloc[-1]
    # FAISS returns fewer candidates than k: popular items fill up to k
    with running_server(home, env={"RECSYS_N_CANDIDATES": "3"}) as server:
        body = get(server, user, k=20).json()
        assert len(body["items"]) == 20 and not body["degraded"]
        assert Counter(it["source"] for it in body["items"]) == {"ann": 3, "popular": 17}
        assert [it["position"] for it in body["items"]] == list(range(1, 21))
        assert len({it["item_id"] for it in body["items"]}) == 20
        unknown = get(server, "nobody-knows-me", k=100).json()
        assert len(unknown["items"]) == 100 and {it["source"] for it in unknown["items"]} == {"popular"}


def _reload(server, token: str | None, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/admin/reload", json=body, headers=headers, timeout=60)


def test_bundle_swaps_atomically_under_load_rolls_back_and_refuses_corrupt_ones(copy_of_demo_home):
    home = copy_of_demo_home
    first = newest_manifest(home)["version"]
    recsys("train", "--home", str(home))
    second = newest_manifest(home)["version"]
    assert second != first
    corrupt = home / "bundles" / "corrupt"
    shutil.copytree(home / "bundles" / second, corrupt)
    (corrupt / "ranker.onnx").write_bytes(b"not a model")
    incomplete = home / "bundles" / "incomplete"
    shutil.copytree(home / "bundles" / second, incomplete)
    (incomplete / "item_ids.json").unlink()
    users = list(Dataset.load(home / "data").users["user_id"][:50])

    env = {"RECSYS_BUNDLE": str(home / "bundles" / first), "RECSYS_ADMIN_TOKEN": "s3cret"}
    with running_server(home, env=env) as server:
        assert _reload(server, None).status_code == 401
        assert _reload(server, "wrong").status_code == 401
        answers: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def load() -> None:  # back-to-back requests for the whole swap
            with httpx.Client(timeout=30) as client:
                i = 0
                while not stop.is_set():
                    r = client.get(f"{server.url}/recommend", params={"user_id": users[i % len(users)], "k": 10})
                    answers.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else None))
                    i += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        swapped = _reload(server, "s3cret", bundle=str(home / "bundles" / second))
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert swapped.status_code == 200 and swapped.json() == {"model_version": second, "previous": first}
        assert {status for status, _ in answers} == {200}
        versions = [version for _, version in answers]
        assert set(versions) == {first, second}

        for bad, reason in ((corrupt, "checksum"), (incomplete, "item_ids.json")):
            refused = _reload(server, "s3cret", bundle=str(bad))
            assert refused.status_code == 422 and reason in refused.json()["detail"], refused.text
            assert get(server, users[0]).json()["model_version"] == second

        rolled_back = _reload(server, "s3cret", rollback=True)
        assert rolled_back.json() == {"model_version": first, "previous": second}
        assert get(server, users[0]).json()["model_version"] == first
        assert f'recsys_model_info{{version="{first}"}} 1.0' in httpx.get(f"{server.url}/metrics").text

    # No answer mixed versions: rescoring each request with the bundle it names reproduces its logged scores.
    logs = load_logs(home / "logs")
    store = open_store("embedded", home / "features", "recsys", "redis://127.0.0.1:6379/0")
    for version in (first, second):
        mine = logs.requests["model_version"] == version
        subset = FlatLogs(rows=logs.rows[logs.rows["request_id"].isin(logs.requests.loc[mine, "request_id"])],
                          requests=logs.requests[mine])
        rescored = bundle_scores(subset, load_model(home / "bundles" / version), store)
        for scores, logged in zip(rescored, subset.requests["candidate_scores"], strict=True):
            np.testing.assert_allclose(scores, logged, atol=1e-4)
