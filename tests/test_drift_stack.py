"""Drift monitoring end to end: a real server, a real Prometheus, real headless Chromium, `recsys drift`.

One run on a copy of the small demo world (module fixture):

1. `recsys serve`; Prometheus (1 s scrape and rule evaluation, the repository's rules) scrapes it;
2. phase 1: `recsys simulate`, users clicking by the simulator's true click model, no drift;
3. drift is injected: every item's price x 3 in the feature tables, materialized into the online
   store while the server runs (covariate drift of `i_price` only; x 3, so that it dominates the
   5-minute windows that also hold phase 1), and phase 2 simulates concept
   drift (`--drift-day 0 --drift-strength 1`: a segment's taste moves), so CTR falls;
4. the tests check what each consumer makes of it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ROOT, free_port, recsys, running_server

from services import stack
from training.dataset import Dataset

DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "recsys-overview.json"
ARTIFACTS = ROOT / "test-artifacts"
DRIFTED = "i_price"
PRICE_FACTOR = 3.0
REQUESTS_PER_PHASE = 300


@dataclass
class DriftRun:
    home: Path
    url: str
    prometheus: str | None
    phase2_s: float  # how long phase 2 took (wall clock = the log's clock)
    phase1_log: Path


def simulate(url: str, home: Path, seed: int, *drift: str) -> dict:
    out = recsys("simulate", "--url", url, "--home", str(home), "--users", "600", "--requests",
                 str(REQUESTS_PER_PHASE), "--seed", str(seed), *drift)
    return json.loads(out.stdout)


def inject_price_drift(home: Path) -> None:
    """Every item's price x PRICE_FACTOR in the feature tables, then materialized (the server keeps serving)."""
    dataset = Dataset.load(home / "data")
    dataset.items["price"] = dataset.items["price"] * PRICE_FACTOR
    drifted = home / "drifted-data"
    dataset.save(drifted)
    recsys("features", "apply", "--data", str(drifted), "--home", str(home))
    recsys("features", "materialize", "--home", str(home))


def start_prometheus(stack_: ExitStack, api: str, workdir: Path) -> str:
    port = free_port()
    config = stack.prometheus_config(api.removeprefix("http://"), f"127.0.0.1:{port}", "1s")
    workdir.mkdir(parents=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    stack_.callback(lambda: (process.send_signal(signal.SIGTERM), process.wait(timeout=30), log.close()))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, (workdir / "prometheus.log").read_text()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def run(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("drift") / "home"
    shutil.copytree(demo_home, home, ignore=shutil.ignore_patterns("logs"))
    with ExitStack() as stack_:
        server = stack_.enter_context(running_server(home))
        prometheus = start_prometheus(stack_, server.url, home / "prometheus") if shutil.which("prometheus") else None
        simulate(server.url, home, 0)
        phase1_log = home / "phase1-impressions.jsonl"
        time.sleep(1)  # the log writer flushes in the background
        shutil.copy(home / "logs" / "impressions.jsonl", phase1_log)
        inject_price_drift(home)
        started = time.time()
        simulate(server.url, home, 1, "--drift-day", "0", "--drift-strength", "1.0")
        yield DriftRun(home, server.url, prometheus, time.time() - started, phase1_log)


def query(prometheus: str, promql: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def wait_for(check, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s"
        time.sleep(1)


def test_prometheus_alerts_on_the_drifted_feature_only_and_every_panel_has_data(run):
    if run.prometheus is None:
        pytest.skip("the prometheus binary is not installed (infra/ci/install-system-deps.sh installs it)")
    firing = wait_for(lambda: query(run.prometheus, 'ALERTS{alertname="RecsysFeatureDrift", alertstate="firing"}'),
                      "RecsysFeatureDrift firing", 150)
    assert {a["metric"]["feature"] for a in firing} == {DRIFTED}
    pending_or_firing = query(run.prometheus, 'ALERTS{alertname="RecsysFeatureDrift"}')
    assert {a["metric"]["feature"] for a in pending_or_firing} == {DRIFTED}
    # Every series has its statistics; PSI itself is not the alert (small windows inflate it).
    psi = query(run.prometheus, 'recsys:feature_drift_psi{window="5m"}')
    reference = json.loads(next((run.home / "bundles").glob("*/drift_reference.json")).read_text())
    assert {r["metric"]["feature"] for r in psi} == {series["name"] for series in reference["series"]}
    groups = httpx.get(f"{run.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            continue
        results = [query(run.prometheus, t["expr"].replace("$__rate_interval", "1m")) for t in panel["targets"]]
        assert any(results), f"dashboard panel {panel['title']!r} has no data"


def test_recsys_drift_recommends_retraining_on_drift_and_a_ctr_drop(run):
    result = recsys("drift", "--home", str(run.home), "--window-s", f"{run.phase2_s + 1:.0f}", "--json", check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert DRIFTED in report["drifting"] and report["retrain"]
    assert report["ctr"]["relative_drop"] > 0.05 and report["ctr"]["dropped"]
    assert f"{DRIFTED}" in report["reason"] and "CTR fell" in report["reason"]
    # The undrifted phase alone: its second half against its first, no drift, no retraining.
    calm = recsys("drift", "--home", str(run.home), "--logs", str(run.phase1_log), "--window-s", "5", "--json",
                  check=False)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert json.loads(calm.stdout)["drifting"] == []


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=120)


def test_dashboard_page_shows_the_drifted_feature_in_headless_chromium(run, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (infra/ci/install-system-deps.sh installs Debian's chromium)")
    data = httpx.get(f"{run.url}/dashboard/data", timeout=10).json()
    assert DRIFTED in data["drifting"]
    page = f"{run.url}/dashboard"
    dom = chromium("--dump-dom", page, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # the page logs nothing: any console line is an error or a warning
    html = dom.stdout
    assert 'data-loaded="true"' in html
    assert f'<tr data-series="{DRIFTED}" class="drifting">' in html
    assert '<tr data-series="u_events_total" class="ok">' in html
    assert "Drifting: " in html and DRIFTED in html.split("Drifting: ")[1].split("<")[0]
    assert 'data-stage="ranking"' in html
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1600,1400", page, profile=tmp_path / "profile2")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_metrics_add_up_across_worker_processes(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home, ignore=shutil.ignore_patterns("logs"))
    users = json.loads(next((home / "bundles").glob("*/user_ids.json")).read_text())[:60]
    with running_server(home, env={"RECSYS_WORKERS": "2"}) as server, httpx.Client(timeout=30) as client:
        for user in users:
            assert client.get(f"{server.url}/recommend", params={"user_id": user, "k": 5}).status_code == 200
        processes, scrapes = set(), []
        for _ in range(10):  # new connections: the kernel spreads them over the workers
            processes.add(httpx.get(f"{server.url}/dashboard/data", timeout=10).json()["process"])
            scrapes.append(httpx.get(f"{server.url}/metrics", timeout=10).text)
    assert len(processes) == 2, "both workers should have answered"
    for text in scrapes:  # whichever worker answered, the totals are every worker's
        assert f'recsys_requests_total{{endpoint="/recommend",status="200"}} {len(users)}.0' in text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith('recsys_drift_observations_total{') and 'feature="i_price"' in line)
        assert counted == len(users)
        assert text.count("recsys_model_info{") == 1

