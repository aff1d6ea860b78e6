"""Shared fixtures: a work directory built by the real CLI, and real server processes on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"


def recsys(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run the `recsys` CLI in a subprocess, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"recsys {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    home: Path

    def stop(self) -> int:
        """SIGTERM, as an orchestrator would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.process.returncode


# Stage budgets of the served process in tests: production's are tens of milliseconds, which a busy
# CI machine can overrun now and then, turning an answer degraded. Tests of the budgets set their own.
GENEROUS_BUDGETS = {"RECSYS_STORE_TIMEOUT_MS": "5000", "RECSYS_RETRIEVAL_BUDGET_MS": "5000",
                    "RECSYS_RANKING_BUDGET_MS": "5000", "RECSYS_REQUEST_DEADLINE_MS": "60000"}


@contextmanager
def running_server(home: Path, env: dict | None = None) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--home", str(home), "--port", str(port)],
        cwd=ROOT, env={**os.environ, **GENEROUS_BUDGETS, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, home=home)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited early:\n{process.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready within 90 s")
            time.sleep(0.3)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """`recsys demo --no-serve` on the small simulator: data, features (SQLite online), bundle."""
    home = tmp_path_factory.mktemp("demo-home")
    recsys("demo", "--no-serve", "--size", "small", "--home", str(home))
    return home


@pytest.fixture
def copy_of_demo_home(demo_home, tmp_path) -> Path:
    """A private copy, for tests that write (logs, other profiles)."""
    home = tmp_path / "home"
    shutil.copytree(demo_home, home, ignore=shutil.ignore_patterns("logs"))
    return home


def newest_manifest(home: Path) -> dict:
    bundles = sorted(p for p in (home / "bundles").iterdir() if (p / "manifest.json").exists())
    return json.loads((bundles[-1] / "manifest.json").read_text())
