"""Closed-loop simulation: the simulator's users against a running server, clicking by the true click model.

For each request a user drawn (seeded) from the simulated world asks ``POST /recommend``; each
served item is clicked with its true probability at its served position
(:meth:`training.simulator.Simulator.click_probability`) and every click is posted back to
``/feedback``, so the server's impression and feedback logs look like real traffic: the input of
``recsys ope``, ``recsys ab-report`` and the tests.

Time. The response does not carry the impression's timestamp, so the click model is asked at the
simulator's own time base: the end of the dataset (``start_ts + n_days * 86400``, where a server on
the ``data`` clock starts too) plus the wall-clock seconds since the simulation started. Feedback is
posted without a ``ts``, so the server stamps it with its own clock, the one the impression was
logged with, and the attribution window of the reward join holds.

Drift. ``drift_day`` rebuilds the world with a taste shift of ``drift_segment`` (strength
``drift_strength``) from that day of the simulated calendar on (day ``n_days`` is the dataset's end):
concept drift the served model never saw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from training.dataset import META_FILE
from training.simulator import DAY, DriftSpec, SimConfig, Simulator


def world(data_dir: Path, drift_day: int | None = None, drift_segment: int = 0,
          drift_strength: float = 0.8) -> Simulator:
    """The simulated world that generated ``data_dir`` (from its meta), optionally drifted."""
    meta_path = data_dir / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no dataset meta; closed-loop simulation needs simulator data")
    meta = json.loads(meta_path.read_text())
    if meta.get("source") != "simulator":
        raise ValueError(f"{data_dir}: not simulator data (source={meta.get('source')!r}); no true click model")
    config = SimConfig.from_dict(meta["config"])
    if drift_day is not None:
        config = replace(config, drift=DriftSpec(start_day=drift_day, taste_shift_segment=drift_segment,
                                                 taste_shift_strength=drift_strength))
    return Simulator(config)


def simulate(url: str, data_dir: Path, n_users: int = 100, n_requests: int = 500, rate: float | None = None,
             seed: int = 0, k: int = 10, drift_day: int | None = None, drift_segment: int = 0,
             drift_strength: float = 0.8, timeout: float = 10.0,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Play ``n_requests`` requests of ``n_users`` simulated users against ``url``; returns a summary."""
    if n_users < 1 or n_requests < 1:
        raise ValueError("--users and --requests must be >= 1")
    sim = world(data_dir, drift_day, drift_segment, drift_strength)
    cfg = sim.config
    base_ts = cfg.start_ts + cfg.n_days * DAY
    rng = np.random.default_rng(seed)
    active = sim.user_ids[sim.signup_day < cfg.n_days]
    users = rng.choice(active, size=min(n_users, len(active)), replace=False)
    sequence = users[rng.integers(0, len(users), n_requests)]
    draws = rng.random((n_requests, 100))  # one uniform per (request, position): reproducible clicks
    summary = {"requests": 0, "impressions": 0, "clicks": 0, "expected_clicks": 0.0, "errors": {}, "users": len(users),
               "time_base": base_ts, "seed": seed}
    base = url.rstrip("/")
    started = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        for n, user in enumerate(sequence):
            if rate:
                wait = started + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            response = client.post(f"{base}/recommend", json={"user_id": str(user), "k": k})
            if response.status_code != 200:
                key = str(response.status_code)
                summary["errors"][key] = summary["errors"].get(key, 0) + 1
                continue
            body = response.json()
            items = body["items"]
            summary["requests"] += 1
            if progress is not None:
                progress(n + 1, n_requests)
            if not items:
                continue
            ids = [it["item_id"] for it in items]
            positions = np.array([it["position"] for it in items])
            ts = int(base_ts + time.monotonic() - started)
            probability = sim.click_probability([str(user)] * len(ids), ids, positions, ts)
            clicked = draws[n, : len(ids)] < probability
            summary["impressions"] += len(ids)
            summary["expected_clicks"] += float(probability.sum())
            for item_id in np.asarray(ids, dtype=object)[clicked]:
                feedback = client.post(f"{base}/feedback", json={"request_id": body["request_id"],
                                                                 "user_id": str(user), "item_id": item_id,
                                                                 "event": "click", "value": 1.0})
                if feedback.status_code != 202:
                    key = f"feedback {feedback.status_code}"
                    summary["errors"][key] = summary["errors"].get(key, 0) + 1
                else:
                    summary["clicks"] += 1
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    summary["expected_clicks"] = round(summary["expected_clicks"], 4)
    summary["ctr"] = round(summary["clicks"] / summary["impressions"], 6) if summary["impressions"] else None
    return summary
