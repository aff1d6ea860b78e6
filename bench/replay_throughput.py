"""How fast can `recsys replay` generate load? Its max achieved rate against a trivial local server.

A minimal ASGI app (a fixed JSON body) runs under uvicorn (httptools, uvloop) in a separate process;
the generator replays a synthetic request file at increasing fixed rates. A rate is sustained when
every request completed without error, the achieved rate is within 2% of the target, and the
generator's own p99 lateness (actual minus planned send time) stays under 5 ms.

    .venv/bin/python bench/replay_throughput.py [--rates 500,1000,2000,3000] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.replay import load_requests, run, run_load  # noqa: E402

APP = '''
BODY = b'{"items":[]}'

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="500,1000,2000,3000,4000,5000")
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "trivial_app.py").write_text(APP)
    (work / "requests.jsonl").write_text("".join(json.dumps({"user_id": f"u{i}", "k": 10}) + "\n" for i in range(1000)))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "trivial_app:app", "--port", str(port), "--log-level",
                               "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
                              cwd=work, env={**os.environ, "PYTHONPATH": str(work)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        requests = load_requests(work / "requests.jsonl")
        best = 0.0
        print(f"{'target/s':>9} {'achieved/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'late p99 ms':>11} {'errors':>6}")
        for rate in [float(r) for r in args.rates.split(",")]:
            report = run(run_load(requests, url, "rate", rate, args.duration, path="/", max_connections=256))
            late = report["generator_lateness_ms"]["p99"]
            print(f"{rate:>9.0f} {report['achieved_rate']:>10.1f} {report['latency_ms']['p50']:>8.2f} "
                  f"{report['latency_ms']['p99']:>8.2f} {late:>11.2f} {report['errors']['total']:>6}")
            if report["errors"]["total"] == 0 and report["send_rate"] >= 0.98 * rate and late < 5.0:
                best = max(best, rate)
        print(f"max sustained rate: {best:.0f} requests/s (generator p99 lateness < 5 ms, no errors)")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
