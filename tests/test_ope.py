"""Off-policy evaluation: log flattening and reward join, estimator identities, accuracy on the
simulator where the truth is known, and the `recsys ope` rollout gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import recsys

from bench.ope_simulation import draw_contexts, run_study, serve_logs
from monitoring.ope import Estimate, Report, collect, evaluate, gate
from serving.event_log import load_logs
from serving.exploration import make_policy
from training.simulator import SimConfig, Simulator

LOGGER = ("squarecb", {"gamma": 5.0, "rate": 0.5, "max_explore": 0.5})
TARGETS = {
    "logger": LOGGER,
    "greedy": ("greedy", {}),
    "epsilon_greedy": ("epsilon_greedy", {"epsilon": 0.2, "epsilon_min": 0.2}),
    "squarecb(gamma=20)": ("squarecb", {"gamma": 20.0, "rate": 0.2}),
}
SEEDS = list(range(10))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("study"), SEEDS, n_requests=1000, targets=TARGETS, logger=LOGGER,
                     n_boot=200)


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory) -> Path:
    sim = Simulator(SimConfig.preset("tiny"))
    return serve_logs(make_policy(*LOGGER), draw_contexts(sim, 1500, seed=99), tmp_path_factory.mktemp("logs"), 99)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def impression(request_id: str, ts: float, items: list[str], propensity: float = 1.0) -> dict:
    return {"request_id": request_id, "ts": ts, "user_id": "u1", "model_version": "v", "k": len(items),
            "policy": {"name": "greedy", "params": {}}, "arm": None,
            "slate": [{"item_id": i, "position": p + 1, "score": 0.0, "propensity": propensity, "source": "ann"}
                      for p, i in enumerate(items)]}


def test_rewards_are_joined_within_the_attribution_window(tmp_path):
    write_jsonl(tmp_path / "impressions.jsonl", [impression("r1", 1000.0, ["a", "b", "c"]),
                                                  impression("r2", 2000.0, ["a", "b"])])
    write_jsonl(tmp_path / "feedback.jsonl", [
        {"request_id": "r1", "ts": 1010.0, "user_id": "u1", "item_id": "a", "event": "click", "value": 1.0},
        {"request_id": "r1", "ts": 1020.0, "user_id": "u1", "item_id": "a", "event": "click", "value": 1.0},  # retry
        {"request_id": "r1", "ts": 9000.0, "user_id": "u1", "item_id": "b", "event": "click", "value": 1.0},  # late
        {"request_id": "r1", "ts": 1010.0, "user_id": "u1", "item_id": "c", "event": "view", "value": 1.0},
        {"request_id": "r2", "ts": 1990.0, "user_id": "u1", "item_id": "b", "event": "click", "value": 1.0},  # early
        {"request_id": "r9", "ts": 1010.0, "user_id": "u1", "item_id": "a", "event": "click", "value": 1.0},
    ])
    rows = load_logs(tmp_path, window_s=3600).rows.set_index(["request_id", "item_id"])["reward"]
    assert rows.to_dict() == {("r1", "a"): 1.0, ("r1", "b"): 0.0, ("r1", "c"): 0.0, ("r2", "a"): 0.0, ("r2", "b"): 0.0}
    views = load_logs(tmp_path, events=["click", "view"]).rows.set_index(["request_id", "item_id"])["reward"]
    assert views[("r1", "c")] == 1.0


def test_a_malformed_log_line_is_named_without_a_traceback(tmp_path):
    path = write_jsonl(tmp_path / "impressions.jsonl", [impression("r1", 1.0, ["a"])])
    with path.open("a") as f:
        f.write('{"request_id": "r2", "ts": \n')
    with pytest.raises(ValueError, match="impressions.jsonl: line 2"):
        load_logs(path)
    result = recsys("ope", "--logs", str(path), check=False)
    message = " ".join(result.stderr.split())  # the console may wrap long lines
    assert result.returncode == 1
    assert "impressions.jsonl: line 2: not a JSON record" in message and "Traceback" not in message
    write_jsonl(path, [{**impression("r1", 1.0, ["a"]), "slate": [{"item_id": "a", "position": 1, "propensity": 0}]}])
    with pytest.raises(ValueError, match="line 1: propensity: must be in \\(0, 1\\]"):
        load_logs(path)


def test_flat_rows_from_csv_give_weighted_estimates(tmp_path):
    rows = pd.DataFrame({"request_id": ["r1", "r1", "r2", "r2"], "ts": [1, 1, 2, 2], "user_id": "u",
                         "item_id": ["a", "b", "a", "c"], "position": [1, 2, 1, 2], "reward": [1, 0, 0, 1],
                         "propensity": [0.5, 0.5, 0.5, 0.25], "target_propensity": [1.0, 0.0, 1.0, 0.5]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = json.loads(recsys("ope", "--logs", str(tmp_path / "rows.csv"), "--json").stdout)["report"]
    assert set(out["estimates"]) == {"ips", "snips"}  # DM and the DR family need logged candidates
    assert out["estimates"]["ips"]["value"] == pytest.approx((2 * 1 + 2 * 1) / 2)
    assert out["estimates"]["snips"]["value"] == pytest.approx(2 / 4 + 2 / 2)  # per position: sum wr / sum w
    rows.loc[2, "propensity"] = "high"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: row 3: column 'propensity': bad value 'high'"):
        load_logs(tmp_path / "bad.csv")


def test_estimator_identities(logs_dir):
    logs = load_logs(logs_dir)
    evidence = collect(logs, make_policy("epsilon_greedy", {"epsilon": 0.2, "epsilon_min": 0.2}))
    at_zero = evaluate(evidence, "t", switch_tau=0.0).estimates
    at_infinity = evaluate(evidence, "t", switch_tau=math.inf).estimates
    assert at_zero["switch_dr"] == at_zero["dm"]  # threshold 0: every weighted correction switched off
    assert at_infinity["switch_dr"] == at_infinity["dr"]
    # The logging policy recomputed from the logged candidates: every weight is exactly 1 ...
    same = collect(logs, make_policy(*LOGGER))
    np.testing.assert_allclose(same.weight[same.present], 1.0, rtol=1e-12)
    # ... so SNIPS (and IPS) are the logged mean reward per request.
    logged_mean = logs.rows["reward"].sum() / logs.rows["request_id"].nunique()
    estimates = evaluate(same, "logger").estimates
    assert estimates["snips"].value == pytest.approx(logged_mean, rel=1e-12)
    assert estimates["ips"].value == pytest.approx(logged_mean, rel=1e-12)


@pytest.mark.parametrize("target", ["logger", "greedy", "squarecb(gamma=20)"])
def test_ips_is_unbiased(study, target):
    cases = [c for c in study if c.target == target]
    errors = np.array([c.estimates["ips"][0] - c.truth for c in cases])
    assert abs(errors.mean()) < 3 * errors.std(ddof=1) / np.sqrt(len(errors))


def test_the_true_value_lies_in_the_dr_interval(study):
    covered = [c.estimates["dr"][1] <= c.truth <= c.estimates["dr"][2] for c in study]
    assert np.mean(covered) >= 0.9, f"DR 95% intervals covered the truth in {np.mean(covered):.0%} of cases"


def test_rollout_gate_accepts_a_better_candidate_and_refuses_a_worse_one(logs_dir):
    better = recsys("ope", "--logs", str(logs_dir), "--candidate", "greedy", "--baseline", "current", check=False)
    assert better.returncode == 0, better.stderr
    assert better.stderr.strip().startswith("accepted: greedy")
    uniform = '{"gamma": 0, "rate": 1, "max_explore": 1}'
    worse = recsys("ope", "--logs", str(logs_dir), "--candidate", "squarecb", "--candidate-params", uniform,
                   "--baseline", "current", "--json", check=False)
    assert worse.returncode == 2
    [reason] = worse.stderr.strip().splitlines()
    assert reason.startswith("refused: squarecb") and "lower bound" in reason and "5% tolerance" in reason
    decision = json.loads(worse.stdout)["decision"]
    assert decision == {"accepted": False, "reason": reason}


def test_unreliable_weights_are_flagged_and_refused(tmp_path):
    n = 400
    rows = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "ts": 0, "user_id": "u", "item_id": "a",
                         "position": 1, "reward": np.arange(n) % 2, "propensity": 0.5, "target_propensity": 0.5})
    rows.loc[0, ["propensity", "target_propensity", "reward"]] = [0.001, 1.0, 1.0]  # one row of weight 1000
    rows.to_parquet(tmp_path / "rows.parquet")
    result = recsys("ope", "--logs", str(tmp_path / "rows.parquet"), "--baseline", "current", "--estimator", "ips",
                    check=False)
    assert result.returncode == 2
    assert "warning: one row carries" in result.stdout and "warning: effective sample size" in result.stdout
    assert result.stderr.startswith("refused: per-row target_propensity: the ips estimate is unreliable")


def test_gate_tolerance_is_a_share_of_the_baseline():
    report = Report("b", 100, 1000, {"dr": Estimate(0.98, 0.955, 1.0)}, 1000.0, 2.0, 1.0)
    assert gate(report, Estimate(1.0, 0.9, 1.1), "dr", tolerance=0.05).accepted
    assert not gate(report, Estimate(1.0, 0.9, 1.1), "dr", tolerance=0.04).accepted
    with pytest.raises(ValueError, match="available: dr"):
        gate(report, Estimate(1.0, 0.9, 1.1), "sndr")
