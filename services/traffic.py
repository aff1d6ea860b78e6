"""A small traffic generator so the stack's dashboards move: ``python -m services.traffic``.

At a fixed rate it asks ``GET /recommend`` for a random known user (from the newest bundle's
``user_ids.json``; 5% unknown users, who get the popularity fallback) and, with probability
``--click-prob``, posts a click on one of the first five items to ``/feedback``. It is bounded in
time (``--duration``) and stops by itself; SIGTERM or Ctrl-C stop it early. It prints a JSON summary.

This is a stand-in for the closed-loop traffic simulator (replay of logged requests, clicks drawn
from the simulator's known click model), which replaces it in ``docker-compose.yml`` and
``recsys up --traffic`` when it lands.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx


def known_users(home: Path | None) -> list[str]:
    """The users of the newest bundle in ``home`` (bundle versions sort by time), or none."""
    bundles = sorted((home / "bundles").glob("*/user_ids.json")) if home else []
    return [str(user) for user in json.loads(bundles[-1].read_text())] if bundles else []


def wait_ready(client: httpx.Client, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"traffic: {url} not ready after {timeout_s:.0f} s")
        time.sleep(1)


def run(url: str, users: list[str], rate: float, duration: float, click_prob: float, k: int,
        seed: int) -> dict:
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    clicks = 0
    interval = 1.0 / rate
    started = time.monotonic()
    next_at = started
    with httpx.Client(timeout=10) as client:
        try:
            wait_ready(client, url, 120)
            started = next_at = time.monotonic()
            while time.monotonic() - started < duration:
                known = users and rng.random() >= 0.05
                user = users[rng.randrange(len(users))] if known else f"new-{rng.randrange(10**6)}"
                try:
                    response = client.get(f"{url}/recommend", params={"user_id": user, "k": k})
                    statuses[f"recommend {response.status_code}"] += 1
                    items = response.json().get("items", []) if response.status_code == 200 else []
                    if items and rng.random() < click_prob:
                        item = items[min(int(rng.expovariate(0.7)), len(items) - 1, 4)]
                        feedback = client.post(f"{url}/feedback", json={
                            "request_id": response.json()["request_id"], "user_id": user,
                            "item_id": item["item_id"], "event": "click"})
                        statuses[f"feedback {feedback.status_code}"] += 1
                        clicks += 1
                except httpx.HTTPError as exc:
                    statuses[f"error {type(exc).__name__}"] += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except KeyboardInterrupt:
            pass
    elapsed = time.monotonic() - started
    requests = sum(n for key, n in statuses.items() if key.startswith("recommend"))
    return {"seconds": round(elapsed, 1), "recommend_requests": requests,
            "achieved_rate": round(requests / elapsed, 2) if elapsed else 0.0, "clicks": clicks,
            "responses": dict(sorted(statuses.items()))}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The API's base URL.")
    parser.add_argument("--home", type=Path, default=None,
                        help="Work directory whose newest bundle lists the users (default: $RECSYS_HOME).")
    parser.add_argument("--rate", type=float, default=5.0, help="/recommend requests per second.")
    parser.add_argument("--duration", type=float, default=600.0, help="Seconds to run (bounded: it stops by itself).")
    parser.add_argument("--click-prob", type=float, default=0.3, help="Share of answers that get a click.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    home = args.home
    if home is None:
        from services.settings import Settings

        home = Settings().home
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: stop like Ctrl-C, print the summary
    summary = run(args.url.rstrip("/"), known_users(home), args.rate, args.duration, args.click_prob, args.k,
                  args.seed)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
