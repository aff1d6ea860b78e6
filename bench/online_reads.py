"""Benchmark: a request's online feature reads (1 user + 300 candidate items) in-process on Redis.

Compares, in the same run and on the same entities:
- naive: one plain ``get_online_features`` call with 300 (user, item) rows, the Feast docs' way to
  score one user against many candidates;
- served: ``serving.online_features.OnlineFeatures``: one Feast call for the user, items from the
  in-process cache (warm: the steady state of a server).

Target (issue #3): served p99 <= 3 ms. Needs the Redis at 127.0.0.1:6379 (its keys are removed after).

    .venv/bin/python bench/online_reads.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import redis

from feature_repo.definitions import ITEM_ACTIVITY, ITEM_ATTRIBUTES, USER_ACTIVITY, USER_HISTORY, feature_refs
from feature_repo.store import apply, materialize, open_store
from serving.online_features import OnlineFeatures
from training.features import build_feature_tables, next_snapshot
from training.simulator import SimConfig, Simulator

REDIS_URL = "redis://127.0.0.1:6379/0"
N_ITEMS = 300


def percentiles(samples_s: list[float]) -> str:
    ms = np.array(samples_s) * 1000
    return f"p50 {np.percentile(ms, 50):.2f} ms  p99 {np.percentile(ms, 99):.2f} ms  max {ms.max():.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    project = f"bench_reads_{uuid.uuid4().hex[:6]}"
    dataset = Simulator(SimConfig.preset("small")).generate()
    rng = np.random.default_rng(0)
    users = rng.choice(dataset.users["user_id"].to_numpy(), args.requests)
    items = dataset.items["item_id"].to_numpy()
    candidates = [list(rng.choice(items, N_ITEMS, replace=False)) for _ in range(args.requests)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store("redis", Path(tmp), project, REDIS_URL)
            build_feature_tables(dataset).write(Path(tmp))
            apply(store, Path(tmp))
            materialize(store, 0, next_snapshot(dataset.end_ts))

            naive_refs = feature_refs(USER_ACTIVITY, USER_HISTORY, ITEM_ACTIVITY, ITEM_ATTRIBUTES)
            naive = []
            for user, ids in zip(users, candidates, strict=True):
                started = time.perf_counter()
                store.get_online_features(
                    features=naive_refs, entity_rows={"user_id": [user] * len(ids), "item_id": ids}
                ).to_dict()
                naive.append(time.perf_counter() - started)

            served_reader = OnlineFeatures(store)
            served_reader.items(list(items))  # warm the cache: a running server's steady state
            served = []
            for user, ids in zip(users, candidates, strict=True):
                started = time.perf_counter()
                served_reader.user(user)
                served_reader.items(ids)
                served.append(time.perf_counter() - started)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
            client.delete(key)
    print(f"1 user + {N_ITEMS} items, {args.requests} requests, Redis on localhost, 2-core machine")
    print(f"naive get_online_features (all entities): {percentiles(naive)}")
    print(f"served (user via Feast + item cache):     {percentiles(served)}")
    print(f"p99 ratio naive / served: {np.percentile(naive, 99) / np.percentile(served, 99):.1f}x; "
          f"p50 ratio: {np.percentile(naive, 50) / np.percentile(served, 50):.1f}x")


if __name__ == "__main__":
    main()
