"""Off-policy evaluation of a bundle on real served traffic: rescoring logged requests reproduces serving."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import newest_manifest, recsys, running_server

from feature_repo.store import open_store
from monitoring.rescoring import bundle_scores
from serving.event_log import load_logs
from serving.model import load_model


def test_rescoring_logged_requests_with_the_serving_bundle_reproduces_its_scores(copy_of_demo_home):
    home = copy_of_demo_home
    bundle = home / "bundles" / newest_manifest(home)["version"]
    users = json.loads((bundle / "user_ids.json").read_text())[:30]  # users the two-tower model knows
    env = {"RECSYS_POLICY": "softmax", "RECSYS_POLICY_PARAMS": json.dumps({"temperature": 0.5})}
    with running_server(home, env=env) as server:
        for n, user in enumerate(users):
            body = httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": 10}).json()
            if n % 2 == 0:  # click the third item of every other request
                item = body["items"][2]["item_id"]
                httpx.post(f"{server.url}/feedback", json={"request_id": body["request_id"], "user_id": user,
                                                           "item_id": item, "event": "click"})
    logs = load_logs(home / "logs")
    rescored = bundle_scores(logs, load_model(bundle), open_store("embedded", home / "features", "recsys",
                                                                   "redis://127.0.0.1:6379/0"))
    logged = logs.requests["candidate_scores"].to_list()
    assert len(rescored) == len(logged) == 30
    for mine, served in zip(rescored, logged, strict=True):
        assert len(mine) == len(served) > 0
        np.testing.assert_allclose(mine, served, atol=1e-4)

    def estimate(*extra):
        out = recsys("ope", "--logs", str(home / "logs"), "--candidate", "greedy", "--json", "--home", str(home),
                     *extra)
        return json.loads(out.stdout)["report"]

    same_logs = estimate()
    via_bundle = estimate("--candidate-bundle", str(bundle))
    assert via_bundle["n_requests"] == same_logs["n_requests"] == 30
    for name, value in same_logs["estimates"].items():
        assert via_bundle["estimates"][name]["value"] == pytest.approx(value["value"], abs=1e-6), name
