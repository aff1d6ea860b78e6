"""The real server process over HTTP, on the embedded SQLite store and on Redis."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from conftest import newest_manifest, recsys, running_server

from services.api import RecommendResponse
from serving.event_log import read_records
from training.dataset import Dataset

REDIS_URL = "redis://127.0.0.1:6379/0"


def check_recommendations(server, home):
    dataset = Dataset.load(home / "data")
    user = dataset.interactions["user_id"].iloc[-1]
    seen = set(dataset.interactions.loc[dataset.interactions["user_id"] == user, "item_id"])
    version = newest_manifest(home)["version"]

    answer = httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": 10})
    # the JSON is encoded without pydantic (services/api.py: response_json); the contract still holds
    assert RecommendResponse.model_validate_json(answer.content).model_dump() == answer.json()
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["model_version"] == version and body["user_id"] == user and body["degraded"] is False
    items = body["items"]
    assert [it["position"] for it in items] == list(range(1, 11))
    assert {it["source"] for it in items} <= {"ann", "covis", "popular"}
    assert all(it["propensity"] == 1.0 for it in items)
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    assert not {it["item_id"] for it in items} & seen, "recommended an item the user already had"
    assert set(body["timings_ms"]) == {"features", "retrieval", "ranking", "exploration", "logging"}

    posted = httpx.post(f"{server.url}/recommend", json={"user_id": user, "k": 5, "context": {"page": "home"}})
    assert posted.status_code == 200 and len(posted.json()["items"]) == 5
    RecommendResponse.model_validate_json(posted.content)

    cold = httpx.get(f"{server.url}/recommend", params={"user_id": "never-seen-before", "k": 10}).json()
    assert len(cold["items"]) == 10
    assert {it["source"] for it in cold["items"]} == {"popular"}
    return body


def check_freshness(server, home, user):
    """A click is excluded from the user's very next recommendations, and their real-time features move."""
    before = httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": 10}).json()
    clicked = before["items"][0]["item_id"]
    event = {"request_id": before["request_id"], "user_id": user, "item_id": clicked, "event": "click"}
    assert httpx.post(f"{server.url}/feedback", json=event).status_code == 202
    deadline = time.monotonic() + 2.0
    while True:
        after = httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": 10}).json()
        if clicked not in {it["item_id"] for it in after["items"]}:
            break
        assert time.monotonic() < deadline, (
            f"{clicked} still recommended 2 s after the click: "
            + str([line for line in httpx.get(f"{server.url}/metrics").text.splitlines() if "realtime" in line]))
        time.sleep(0.05)
    return clicked, after["request_id"]


def served_user_features(home, request_id):
    record = next(r for r in read_records(home / "logs" / "impressions.jsonl") if r["request_id"] == request_id)
    return record["features"]["user"]


def test_recommend_over_http_on_sqlite(copy_of_demo_home):
    home = copy_of_demo_home
    with running_server(home) as server:
        body = check_recommendations(server, home)
        feedback = {"request_id": body["request_id"], "user_id": body["user_id"],
                    "item_id": body["items"][0]["item_id"], "event": "click", "value": 1}
        assert httpx.post(f"{server.url}/feedback", json=feedback).status_code == 202
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'recsys_request_duration_seconds_count{endpoint="/recommend"} 3.0' in metrics
        assert 'recsys_stage_duration_seconds_count{stage="ranking"}' in metrics
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal as its exit status.
        assert server.stop() in (0, -15)
    impressions = list(read_records(home / "logs" / "impressions.jsonl"))
    assert len(impressions) == 3  # every answered request, flushed on SIGTERM
    first = impressions[0]
    assert first["request_id"] == body["request_id"]
    assert [e["item_id"] for e in first["slate"]] == [it["item_id"] for it in body["items"]]
    assert first["policy"] == {"name": "greedy", "params": {}}
    assert set(first["features"]["items"]) == {it["item_id"] for it in body["items"]}
    assert impressions[1]["context"] == {"page": "home"}
    feedback_log = list(read_records(home / "logs" / "feedback.jsonl"))
    assert feedback_log[0]["item_id"] == feedback["item_id"] and feedback_log[0]["event"] == "click"


def test_bad_requests_get_4xx_with_a_message(copy_of_demo_home):
    with running_server(copy_of_demo_home) as server:
        cases = [
            httpx.get(f"{server.url}/recommend", params={"user_id": "u001", "k": 0}),
            httpx.get(f"{server.url}/recommend", params={"user_id": "u001", "k": 101}),
            httpx.get(f"{server.url}/recommend", params={"k": 5}),
            httpx.post(f"{server.url}/recommend", json={"k": 5}),
            httpx.post(f"{server.url}/recommend", json={"user_id": "u001", "k": "ten"}),
            httpx.post(f"{server.url}/recommend", content=b"{not json", headers={"content-type": "application/json"}),
            httpx.post(f"{server.url}/feedback", json={"user_id": "u001"}),
        ]
        for response in cases:
            assert response.status_code == 422, response.text
            assert response.json()["detail"]
        oversize = httpx.post(f"{server.url}/recommend", json={"user_id": "u001", "context": {"pad": "x" * 100_000}})
        assert oversize.status_code == 413 and "bytes" in oversize.json()["detail"]
        unauthorized = httpx.post(f"{server.url}/admin/reload", json={})
        assert unauthorized.status_code == 401
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_serving_process_does_not_load_torch(copy_of_demo_home):
    with running_server(copy_of_demo_home) as server:
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "onnxruntime" in maps and "faiss" in maps
        assert "libtorch" not in maps


@pytest.fixture
def redis_project():
    """A Feast project name of its own on the shared Redis; its keys are deleted afterwards."""
    project = f"recsys_test_{uuid.uuid4().hex[:8]}"
    yield project
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=b"*" + project.encode()):
        client.delete(key)


def test_recommend_over_http_on_redis(copy_of_demo_home, redis_project):
    env = {"RECSYS_PROFILE": "redis", "RECSYS_PROJECT": redis_project, "RECSYS_REDIS_URL": REDIS_URL}
    home = copy_of_demo_home
    recsys("features", "apply", "--home", str(home), env=env)
    recsys("features", "materialize", "--home", str(home), env=env)
    keys = list(redis.Redis.from_url(REDIS_URL).scan_iter(match=b"*" + redis_project.encode(), count=1000))
    assert len(keys) > 1000  # users and items of the small world, under this project only
    with running_server(home, env=env) as server:
        check_recommendations(server, home)
        assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
        clicked, request_id = check_freshness(server, home, "u002")
    assert served_user_features(home, request_id)["rt_recent_items"][0] == clicked


def test_feedback_is_visible_to_the_next_request_on_sqlite(copy_of_demo_home):
    home = copy_of_demo_home
    with running_server(home) as server:
        first = httpx.get(f"{server.url}/recommend", params={"user_id": "u003", "k": 1}).json()
        clicked, request_id = check_freshness(server, home, "u003")
    before, after = served_user_features(home, first["request_id"]), served_user_features(home, request_id)
    assert after["rt_recent_items"][0] == clicked
    assert after["rt_recent_items"][1:] == before["rt_recent_items"][: len(after["rt_recent_items"]) - 1]
    assert after["rt_last_event_ts"] > before["rt_last_event_ts"]
    assert after["u_events_total"] == before["u_events_total"]  # batch features unchanged
