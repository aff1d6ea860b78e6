"""`recsys replay`: open-loop load generation against a server, and shadow replay on another bundle."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import recsys, running_server

from services.replay import LoggedRequest, load_requests, plan, run_load


@functools.cache
def tiny_world() -> Path:
    """`recsys demo --no-serve --size tiny` once per test process (about 10 s), shared by the replay,
    simulation and A/B tests; each test works on its own copy (:func:`tiny_home`)."""
    home = Path(tempfile.mkdtemp(prefix="recsys-tiny-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    recsys("demo", "--no-serve", "--size", "tiny", "--home", str(home))
    return home


@pytest.fixture
def tiny_home(tmp_path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(tiny_world(), home)
    return home


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plans_fixed_rate_and_sped_up_arrivals():
    requests = [LoggedRequest(f"u{i}", 10, {}, 1000.0 + 10 * i) for i in range(3)]
    assert list(plan(requests, "rate", 4.0, 1.0)) == [(0.0, 0), (0.25, 1), (0.5, 2), (0.75, 0)]
    assert list(plan(requests, "speedup", 10.0, None)) == [(0.0, 0), (1.0, 1), (2.0, 2)]
    # with a duration longer than the log, the log repeats with its own cadence
    assert list(plan(requests, "speedup", 10.0, 5.0)) == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 0), (4.0, 1)]


def test_request_files_and_impression_logs_load_sorted_by_time(tmp_path):
    path = write_lines(tmp_path / "requests.jsonl", [
        {"user_id": 7, "k": 5, "context": {"device": "tv"}, "ts": 20},
        {"user_id": "u1", "ts": 10, "slate": [{}, {}, {}]},
    ])
    assert load_requests(path) == [LoggedRequest("u1", 3, {}, 10.0), LoggedRequest("7", 5, {"device": "tv"}, 20.0)]
    bad = write_lines(tmp_path / "bad.jsonl", [{"k": 5}])
    with pytest.raises(ValueError, match="record 1: lacks 'user_id'"):
        load_requests(bad)


def test_open_loop_sends_on_schedule_while_earlier_requests_are_still_waiting():
    """No coordinated omission: the server holds every answer until all 20 requests arrived; a generator
    that waited for answers before sending would deadlock into timeouts instead."""

    async def scenario() -> tuple[dict, int]:
        arrived, release, seen = [], asyncio.Event(), {"max_waiting": 0}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                arrived.append(1)
                seen["max_waiting"] = max(seen["max_waiting"], len(arrived))
                if len(arrived) == 20:
                    release.set()
                await release.wait()
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = [LoggedRequest(f"u{i}", 10, {}, None) for i in range(20)]
        async with server:
            report = await run_load(requests, f"http://127.0.0.1:{port}", "rate", 200.0, timeout=30.0)
        return report, seen["max_waiting"]

    report, max_waiting = asyncio.run(scenario())
    assert max_waiting == 20  # all 20 were in flight at once: none waited for an earlier answer
    assert report["sent"] == report["completed"] == 20
    assert report["status"] == {"200": 20} and report["errors"]["total"] == 0
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}


def test_a_connection_idle_past_the_pool_limit_is_not_reused():
    """A server that closes keep-alive connections idle for 0.3 s (uvicorn does at 5 s) answers
    the next request only if the pool opened a fresh connection instead of writing into the
    closed one."""
    from services.replay import HttpError, HttpPool

    async def scenario(idle_timeout_s: float) -> list[str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
                except (TimeoutError, asyncio.IncompleteReadError):
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = HttpPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", idle_timeout_s=idle_timeout_s)
        outcomes = []
        async with server:
            for pause in (0.0, 0.6):
                await asyncio.sleep(pause)
                try:
                    outcomes.append(str((await pool.request("GET", "/"))[0]))
                except (HttpError, OSError) as exc:
                    outcomes.append(type(exc).__name__)
            pool.close()
        return outcomes

    assert asyncio.run(scenario(idle_timeout_s=0.1)) == ["200", "200"]
    assert asyncio.run(scenario(idle_timeout_s=60.0))[1] != "200"  # what reusing the stale connection gives


def test_transport_errors_are_counted_not_raised(tmp_path):
    from conftest import free_port

    path = write_lines(tmp_path / "requests.jsonl", [{"user_id": "u1"}] * 3)
    result = recsys("replay", str(path), "--url", f"http://127.0.0.1:{free_port()}", "--rate", "100")
    report = json.loads(result.stdout)
    assert report["sent"] == 3 and report["errors"]["total"] == 3
    assert report["errors"]["transport"] == {"ConnectionRefusedError": 3}


def test_replay_and_shadow_replay_of_served_traffic(tiny_home, tmp_path):
    """Serve with an exploring policy, generate traffic with the simulator, replay it (errors by
    status included), then shadow-replay the log on the bundle that served it."""
    policy = {"temperature": 0.5}
    env = {"RECSYS_POLICY": "softmax", "RECSYS_POLICY_PARAMS": json.dumps(policy)}
    with running_server(tiny_home, env) as server:
        recsys("simulate", "--url", server.url, "--home", str(tiny_home), "--users", "40", "--requests", "60")
        log = tiny_home / "logs" / "impressions.jsonl"
        requests = [json.loads(line) for line in log.read_text().splitlines()]
        bad = write_lines(tmp_path / "mixed.jsonl", requests[:8] + [{"user_id": "u001", "k": 1000}] * 2)
        report_path = tmp_path / "load.json"
        result = recsys("replay", str(bad), "--url", server.url, "--rate", "40", "--duration", "0.5",
                        "--report", str(report_path))
    report = json.loads(result.stdout)
    assert json.loads(report_path.read_text()) == report
    assert report["mode"] == "rate" and report["sent"] == report["completed"] == 20
    assert report["status"] == {"200": 16, "422": 4}
    assert report["errors"]["by_status"] == {"422": 4} and report["errors"]["transport"] == {}
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]

    bundle = next((tiny_home / "bundles").iterdir())
    outputs = []
    for n in range(2):
        out = tmp_path / f"shadow{n}.json"
        recsys("replay", str(tiny_home / "logs"), "--shadow-bundle", str(bundle), "--shadow-policy", "softmax",
               "--shadow-params", json.dumps(policy), "--home", str(tiny_home), "--report", str(out))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]  # same log, bundle and seed: byte-identical reports
    shadow = json.loads(outputs[0])
    assert shadow["requests"] == 60 + 16
    # the serving bundle with the logged policy reproduces what was served
    assert shadow["overlap_at_k"]["mean"] == pytest.approx(1.0, abs=0.02)
    assert shadow["rank_correlation"]["spearman_candidate_scores"] == pytest.approx(1.0, abs=1e-3)
    assert abs(shadow["score_shift"]["mean_abs"]) < 1e-3
    assert "dr" in shadow["ope"]["estimates"] and shadow["ope"]["n_requests"] == 76
