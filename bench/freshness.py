"""Benchmark: feedback-to-visible freshness of real-time user features, under 100 feedback events/s.

Starts the real server on the Redis online store (tiny simulated world), posts click events on an
open-loop schedule (each at its planned time, whether or not earlier ones returned), and polls the
online store from this process until every event's item shows up in its user's ``rt_recent_items``.
Freshness = first poll that sees it - the event's scheduled send time. Target (issue #3): p99 <= 1 s.

    .venv/bin/python bench/freshness.py [--rate 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import httpx
import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import recsys, running_server  # noqa: E402

from feature_repo.definitions import USER_REALTIME, feature_refs  # noqa: E402
from feature_repo.store import open_store  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    project = f"bench_fresh_{uuid.uuid4().hex[:6]}"
    env = {"RECSYS_PROFILE": "redis", "RECSYS_PROJECT": project, "RECSYS_REDIS_URL": REDIS_URL}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            recsys("demo", "--no-serve", "--size", "tiny", "--home", str(home), env=env)
            store = open_store("redis", home / "features", project, REDIS_URL)
            users = [f"u{n:03d}" for n in range(200)]
            n_events = int(args.rate * args.seconds)
            events = [(users[n % len(users)], f"fresh-{n}") for n in range(n_events)]
            sent_at = np.full(n_events, np.nan)
            seen_at = np.full(n_events, np.nan)
            with running_server(home, env=env) as server:
                def send() -> None:
                    start = time.monotonic()
                    with httpx.Client(base_url=server.url) as client:
                        for n, (user, item) in enumerate(events):
                            planned = start + n / args.rate
                            time.sleep(max(0.0, planned - time.monotonic()))
                            sent_at[n] = planned
                            client.post("/feedback", json={"request_id": "bench", "user_id": user, "item_id": item,
                                                           "event": "click"})

                sender = threading.Thread(target=send)
                sender.start()
                deadline = time.monotonic() + args.seconds + 10
                refs = feature_refs(USER_REALTIME)[:1]
                while time.monotonic() < deadline:
                    pending = [n for n in range(n_events) if not np.isnan(sent_at[n]) and np.isnan(seen_at[n])]
                    if not pending and not sender.is_alive():
                        break
                    pending_users = sorted({events[n][0] for n in pending})
                    if pending_users:
                        rows = store.get_online_features(features=refs,
                                                         entity_rows={"user_id": pending_users}).to_dict()
                        now = time.monotonic()
                        recent = {u: set(items or []) for u, items in zip(rows["user_id"], rows["rt_recent_items"],
                                                                           strict=True)}
                        for n in pending:
                            if events[n][1] in recent[events[n][0]]:
                                seen_at[n] = now
                    time.sleep(0.025)
                sender.join()
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
            client.delete(key)
    lag_ms = (seen_at - sent_at) * 1000
    lost = int(np.isnan(lag_ms).sum())
    lag_ms = lag_ms[~np.isnan(lag_ms)]
    print(f"{n_events} feedback events at {args.rate:.0f}/s over {len(users)} users, Redis, server + load on 2 cores")
    print(f"feedback-to-visible: p50 {np.percentile(lag_ms, 50):.0f} ms  p90 {np.percentile(lag_ms, 90):.0f} ms  "
          f"p99 {np.percentile(lag_ms, 99):.0f} ms  max {lag_ms.max():.0f} ms  never visible: {lost}")


if __name__ == "__main__":
    main()
