"""The skew check on real served traffic: clean when both paths agree, flagged when serving computes differently."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
from conftest import recsys, running_server

from feature_repo.definitions import TIMESTAMP, USER_ACTIVITY, feature_refs
from feature_repo.store import open_store
from training.dataset import Dataset
from training.features import DAY, next_snapshot


def serve_some_traffic(home, users):
    with running_server(home) as server:
        for user in users:
            assert httpx.get(f"{server.url}/recommend", params={"user_id": user, "k": 10}).status_code == 200


def skew_report(home):
    result = recsys("skew", "--logs", str(home / "logs" / "impressions.jsonl"), "--json", "--home", str(home),
                    check=False)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_clean_traffic_has_no_skew_and_a_changed_window_is_flagged(copy_of_demo_home):
    home = copy_of_demo_home
    dataset = Dataset.load(home / "data")
    users = sorted(dataset.interactions["user_id"].unique())[:15]
    serve_some_traffic(home, users)
    code, report = skew_report(home)
    assert code == 0 and report["flagged"] == []
    assert report["impressions"] == 15
    assert all(f["compared"] > 0 and f["mismatches"] == 0 for f in report["features"])

    # Inject skew: the online store gets u_events_7d computed over 14 days instead of 7.
    store = open_store("embedded", home / "features", "recsys", "redis://127.0.0.1:6379/0")
    now = next_snapshot(dataset.end_ts)
    online = store.get_online_features(features=feature_refs(USER_ACTIVITY),
                                       entity_rows={"user_id": users}).to_df()
    events = dataset.interactions
    online["u_events_7d"] = [
        int(((events["user_id"] == u) & (events["ts"] >= now - 14 * DAY) & (events["ts"] < now)).sum()) for u in users
    ]
    online[TIMESTAMP] = pd.Timestamp(now, unit="s", tz="UTC")
    store.write_to_online_store(USER_ACTIVITY, online)
    (home / "logs" / "impressions.jsonl").unlink()
    serve_some_traffic(home, users)

    code, report = skew_report(home)
    assert code == 3
    assert report["flagged"] == ["u_events_7d"]
    changed = next(f for f in report["features"] if f["feature"] == "u_events_7d")
    seven_day = np.array([((events["user_id"] == u) & (events["ts"] >= now - 7 * DAY) & (events["ts"] < now)).sum()
                          for u in users])
    assert changed["mismatches"] == int((online["u_events_7d"].to_numpy() != seven_day).sum()) > 0
