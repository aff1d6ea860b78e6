"""Closed-loop simulation against a server and A/B experiments: assignment, logging, the report, SRM."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import recsys, running_server
from test_replay import tiny_home  # noqa: F401  (the fixture, shared with the replay tests)

from monitoring.ab import ab_report
from serving.experiments import bucket, load_experiment, parse_experiment

CONTROL_BETTER = {
    "salt": "test-salt",
    "control": "greedy",
    "arms": [
        {"name": "greedy", "share": 0.5, "policy": "greedy"},
        # uniformly random slates of the 300 retrieved candidates: truly much worse than the ranker
        {"name": "random", "share": 0.5, "policy": "softmax",
         "params": {"temperature": 100.0, "rate": 1.0, "max_explore": 1.0, "protected": 0, "pool": 300}},
    ],
}


def test_assignment_is_stable_and_follows_the_shares(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("salt: s1\narms:\n  - {name: a, share: 0.2}\n  - {name: b, share: 0.8, policy: softmax}\n")
    experiment = load_experiment(path)
    arms = [experiment.assign(f"user{i}").name for i in range(20_000)]
    assert arms == [experiment.assign(f"user{i}").name for i in range(20_000)]  # a pure function of the user
    assert arms.count("a") / len(arms) == pytest.approx(0.2, abs=0.01)
    assert experiment.control_arm == "a"
    assert 0 <= bucket("s1", "user1") < 1 and bucket("s1", "user1") != bucket("s2", "user1")
    with pytest.raises(ValueError, match="sum to 1"):
        parse_experiment({"arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.6}]})
    with pytest.raises(ValueError, match="unknown policy"):
        parse_experiment({"arms": [{"name": "a", "share": 1.0, "policy": "nope"}]})


def fake_logs(directory: Path, arms_of_users: dict[str, str], clicks_by_arm: dict[str, int]) -> Path:
    """One impression of one item per user, clicked on the first ``clicks_by_arm[arm]`` users of each arm."""
    directory.mkdir(parents=True, exist_ok=True)
    impressions, feedback, clicked = [], [], {arm: 0 for arm in clicks_by_arm}
    for n, (user, arm) in enumerate(arms_of_users.items()):
        impressions.append({"request_id": f"r{n}", "ts": 1000.0 + n, "user_id": user, "arm": arm, "k": 1,
                            "slate": [{"item_id": "i1", "position": 1, "score": 1.0, "propensity": 1.0}]})
        if clicked[arm] < clicks_by_arm[arm]:
            clicked[arm] += 1
            feedback.append({"request_id": f"r{n}", "ts": 1001.0 + n, "user_id": user, "item_id": "i1",
                             "event": "click", "value": 1.0})
    (directory / "impressions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in impressions))
    (directory / "feedback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in feedback))
    return directory


def test_srm_check_catches_broken_assignment(tmp_path):
    experiment = parse_experiment({"salt": "x", "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]})
    users = [f"u{i}" for i in range(2000)]
    healthy = fake_logs(tmp_path / "healthy", {u: experiment.assign(u).name for u in users}, {"a": 100, "b": 100})
    report = ab_report(healthy, shares=experiment.shares)
    assert not report["srm"]["mismatch"]
    # broken: a third of arm b's users never got logged (e.g. a crash in b's code path)
    broken_arms = {u: arm for u, arm in ((u, experiment.assign(u).name) for u in users)
                   if arm == "a" or bucket("drop", u) > 1 / 3}
    broken = fake_logs(tmp_path / "broken", broken_arms, {"a": 100, "b": 100})
    report = ab_report(broken, shares=experiment.shares)
    assert report["srm"]["mismatch"] and report["srm"]["p_value"] < 1e-6


def test_power_calculator_scales_with_the_target_effect(tmp_path):
    users = {f"u{i}": "a" if i % 2 else "b" for i in range(2000)}
    logs = fake_logs(tmp_path / "logs", users, {"a": 100, "b": 100})
    report = ab_report(logs, shares={"a": 0.5, "b": 0.5}, mde=0.05)
    power = report["mde"]["b"]["ctr"]
    # at 1,000 users an arm and a 10% CTR, the detectable relative effect is about 2.8 * sqrt(2 * 0.09 / 1000) / 0.1
    assert power["mde_relative"] == pytest.approx(2.8 * (2 * 0.09 / 1000) ** 0.5 / 0.1, rel=0.05)
    needed = power["users_needed"]["treatment"]
    assert needed == pytest.approx(1000 * (power["mde_relative"] / 0.05) ** 2, rel=0.01)
    assert report["lift_vs_control"]["b"]["ctr"]["absolute"] == pytest.approx(0.0)


def test_closed_loop_ab_finds_the_better_arm(tiny_home, tmp_path):  # noqa: F811
    config = tmp_path / "experiments.json"
    config.write_text(json.dumps(CONTROL_BETTER))
    with running_server(tiny_home, {"RECSYS_EXPERIMENTS": str(config)}) as server:
        result = recsys("simulate", "--url", server.url, "--home", str(tiny_home), "--users", "150",
                        "--requests", "300", "--seed", "1")
        metrics = httpx.get(f"{server.url}/metrics").text
    summary = json.loads(result.stdout)
    assert summary["requests"] == 300 and summary["errors"] == {} and summary["clicks"] > 0

    experiment = load_experiment(config)
    records = [json.loads(line) for line in (tiny_home / "logs" / "impressions.jsonl").read_text().splitlines()]
    assert len(records) == 300
    assert all(r["arm"] == experiment.assign(r["user_id"]).name for r in records)  # logged, and stable per user
    served = {arm: sum(r["arm"] == arm for r in records) for arm in ("greedy", "random")}
    for arm, count in served.items():
        assert f'recsys_arm_recommendations_total{{arm="{arm}"}} {float(count)}' in metrics

    out = tmp_path / "ab.json"
    result = recsys("ab-report", "--home", str(tiny_home), "--experiments", str(config), "--mde", "0.1",
                    "--json", "--report", str(out))
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert report["control"] == "greedy" and report["shares_source"] == "config"
    assert report["arms"]["greedy"]["requests"] + report["arms"]["random"]["requests"] == 300
    lift = report["lift_vs_control"]["random"]
    for metric in ("ctr", "clicks_per_request"):
        assert lift[metric]["absolute"] < 0 and lift[metric]["absolute_high"] < 0 and lift[metric]["significant"]
        assert lift[metric]["relative"] < -0.2
    assert not report["srm"]["mismatch"]
    assert report["mde"]["random"]["ctr"]["users_needed"]["treatment"] > report["arms"]["random"]["users"]
    table = recsys("ab-report", "--home", str(tiny_home), "--experiments", str(config)).stdout
    assert "random vs greedy ctr" in table and "SRM check" in table
