"""`recsys up`: the docker-compose stack as local processes, with one command.

The same services, ports, settings and Prometheus configuration as ``docker-compose.yml``:

1. trainer steps, each a child process (training imports torch; this supervisor never does):
   with no bundle in the work directory, ``recsys data generate`` (only if there is no data: imported
   data is trained on as it is), ``recsys train`` and ``recsys features materialize``; with a bundle
   and the Redis profile, ``recsys features apply`` and ``materialize`` (Redis may have restarted empty,
   or the project is new); with a bundle and SQLite, materialize only if that never happened;
2. the API: ``recsys serve`` (the entry point of the compose ``api`` service);
3. Prometheus, if the ``prometheus`` binary is installed, on ``infra/prometheus/prometheus.yml`` with
   the API target rewritten to this machine;
4. optionally the traffic generator (``services/traffic.py``, the compose ``traffic`` profile).

The online store is Redis when ``RECSYS_REDIS_URL`` answers and SQLite (embedded) otherwise, unless
``RECSYS_PROFILE`` is set. Ctrl-C or SIGTERM stops every child; so does any child dying unexpectedly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
API_JOB = "recsys-api"  # the scrape job of the API in prometheus.yml
PROMETHEUS_JOB = "prometheus"
PROMETHEUS_PORT = 9090
STOP_GRACE_S = 20.0


def cli(*args: str) -> list[str]:
    """The argv of a `recsys` subcommand run with this interpreter (a child sees the same environment)."""
    return [sys.executable, "-m", "services.cli", *args]


def traffic_command(url: str, home: Path, rate: float, duration: float) -> list[str]:
    return [sys.executable, "-m", "services.traffic", "--url", url, "--home", str(home), "--rate", str(rate),
            "--duration", str(duration)]


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def resolve_profile(settings: Settings, environ: dict[str, str]) -> str:
    """RECSYS_PROFILE when set; otherwise Redis if it answers, else the embedded SQLite store."""
    if environ.get("RECSYS_PROFILE"):
        return settings.profile
    return "redis" if redis_reachable(settings.redis_url) else "embedded"


def trainer_steps(settings: Settings, size: str, seed: int) -> list[list[str]]:
    """The `recsys` commands that make the work directory servable (none when it already is)."""
    from feature_repo.store import MATERIALIZED_MARKER
    from training.bundle import list_bundles
    from training.dataset import INTERACTIONS_FILE

    home = ["--home", str(settings.home)]
    if not list_bundles(settings.bundles_dir):
        steps = [] if (settings.data_dir / INTERACTIONS_FILE).exists() else [
            cli("data", "generate", "--size", size, "--seed", str(seed), *home)]
        return [*steps, cli("train", *home), cli("features", "materialize", *home)]
    if settings.profile == "redis":
        return [cli("features", "apply", *home), cli("features", "materialize", *home)]
    if not (settings.features_dir / MATERIALIZED_MARKER).exists():
        return [cli("features", "materialize", *home)]
    return []


def prometheus_config(api_target: str, prometheus_target: str, scrape_interval: str | None = None,
                      source: Path = PROMETHEUS_CONFIG) -> dict:
    """The compose Prometheus configuration for local processes: same jobs and rules, local targets.

    Rule files become absolute (they are relative to the config file, which is written elsewhere).
    """
    config = yaml.safe_load(source.read_text())
    config["rule_files"] = [str((source.parent / pattern).resolve()) for pattern in config.get("rule_files", [])]
    if scrape_interval:
        config.setdefault("global", {})["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    targets = {API_JOB: api_target, PROMETHEUS_JOB: prometheus_target}
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if API_JOB not in jobs:
        raise ValueError(f"{source}: no scrape job {API_JOB!r}")
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            if scrape_interval:
                job.pop("scrape_interval", None)
            for static in job.get("static_configs", []):
                static["targets"] = [targets[job["job_name"]]]
    return config


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the supervisor dies without stopping it (SIGKILL, a crash)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop everything."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: object = None  # an open file the child writes to, closed after it exits


@dataclass
class Stack:
    """The supervisor: starts children in order, watches them, stops them all (newest first)."""

    env: dict[str, str]
    say: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __enter__(self) -> Stack:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            raise Stopped(signal.Signals(signum).name)

    def start(self, name: str, argv: list[str], log: Path | None = None) -> Child:
        self.say(f"→ {name}: {' '.join(display(argv))}")
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed when the child is reaped
        preexec = _die_with_parent if sys.platform == "linux" else None
        process = subprocess.Popen(argv, env=self.env, start_new_session=True, preexec_fn=preexec,
                                   stdout=out, stderr=subprocess.STDOUT if out else None)
        child = Child(name, process, out)
        self.children.append(child)
        return child

    def run(self, name: str, argv: list[str]) -> None:
        """A step that must finish successfully before the next starts."""
        child = self.start(name, argv)
        while (code := child.process.poll()) is None:
            time.sleep(0.1)
        self.children.remove(child)
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}): {' '.join(display(argv))}")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
            time.sleep(0.3)

    def check_alive(self) -> None:
        for child in list(self.children):
            code = child.process.poll()
            if code is None:
                continue
            self.children.remove(child)
            if child.log:
                child.log.close()
            if child.name == "traffic" and code == 0:  # bounded by its --duration: done, not failed
                self.say("traffic generator finished")
                continue
            raise RuntimeError(f"{child.name} exited unexpectedly (exit {code})")

    def supervise(self, health: Callable[[], bool], every_s: float = 10.0) -> None:
        """Until a signal: children must stay alive and the API healthy (as a compose healthcheck would)."""
        failures, next_check = 0, time.monotonic() + every_s
        while True:
            self.check_alive()
            if time.monotonic() >= next_check:
                failures = 0 if health() else failures + 1
                if failures >= 3:
                    raise RuntimeError("the API failed its readiness check 3 times in a row")
                next_check = time.monotonic() + every_s
            time.sleep(0.2)

    def stop_all(self) -> None:
        """SIGTERM to each child's process group, newest first; SIGKILL after a grace period."""
        self.stopping = True
        for child in reversed(self.children):
            if child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in {STOP_GRACE_S:.0f} s: killing it")
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
            if child.log:
                child.log.close()
        self.children.clear()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the child leads its own session: its group id is its pid


def display(argv: list[str]) -> list[str]:
    """argv as a user would type it: `recsys ...` for this interpreter's CLI module, `python` for the interpreter."""
    if argv[:3] == [sys.executable, "-m", "services.cli"]:
        return ["recsys", *argv[3:]]
    return ["python", *argv[1:]] if argv[:1] == [sys.executable] else argv


def step_name(argv: list[str]) -> str:
    """`recsys features materialize --home H` → "features materialize"."""
    words = display(argv)[1:]
    return " ".join(words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))])


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class UpOptions:
    size: str = "small"
    seed: int = 0
    prometheus: bool = True
    prometheus_port: int = PROMETHEUS_PORT
    scrape_interval: str | None = None
    traffic: bool = False
    traffic_rate: float = 5.0
    traffic_duration: float = 3600.0
    serve: bool = True
    ready_timeout_s: float = 120.0


def up(settings: Settings, options: UpOptions, say: Callable[[str], None] = print) -> int:
    """Run the stack until a signal; returns the exit code (0 after Ctrl-C/SIGTERM, 1 if a part failed)."""
    profile = resolve_profile(settings, dict(os.environ))
    settings = settings.model_copy(update={"profile": profile, "home": settings.home.resolve()})
    # Children see the same settings; ROOT on the path makes `python -m services.cli` work from a checkout too.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "RECSYS_HOME": str(settings.home), "RECSYS_PROFILE": profile, "PYTHONPATH": path}
    say(f"online store: {profile}" + (f" ({settings.redis_url}, project {settings.project})"
                                      if profile == "redis" else f" (SQLite in {settings.features_dir})"))
    try:
        with Stack(env, say) as stack:
            for argv in trainer_steps(settings, options.size, options.seed):
                stack.run(step_name(argv), argv)
            if not options.serve:
                say(f"work directory ready: {settings.home}")
                return 0
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            api = f"http://{host}:{settings.port}"
            stack.start("api", cli("serve", "--host", settings.host, "--port", str(settings.port)))
            stack.wait_until(lambda: http_ok(f"{api}/readyz"), "the API", options.ready_timeout_s)
            urls = {"api": f"{api}  (/recommend, /feedback, /metrics, /docs)"}
            prometheus = shutil.which("prometheus") if options.prometheus else None
            if prometheus:
                urls["prometheus"] = start_prometheus(stack, prometheus, settings, host, options)
            elif options.prometheus:
                urls["prometheus"] = "not started: no `prometheus` binary on PATH (apt-get install prometheus)"
            if options.traffic:
                stack.start("traffic", traffic_command(api, settings.home, options.traffic_rate,
                                                       options.traffic_duration))
                urls["traffic"] = f"{options.traffic_rate:g} requests/s for {options.traffic_duration:g} s"
            urls["grafana"] = "with docker compose only (http://localhost:3000)"
            say("stack up (Ctrl-C stops it):\n" + "\n".join(f"  {name:<11} {url}" for name, url in urls.items()))
            stack.supervise(lambda: http_ok(f"{api}/readyz"))
    except Stopped as stop:
        say(f"{stop.args[0]}: stopping")
        return 0
    except RuntimeError as exc:
        say(f"error: {exc}; stopping")
        return 1
    return 0


def start_prometheus(stack: Stack, binary: str, settings: Settings, host: str, options: UpOptions) -> str:
    workdir = settings.home / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    target = f"127.0.0.1:{options.prometheus_port}"
    config = prometheus_config(f"{host}:{settings.port}", target, options.scrape_interval)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    log = settings.logs_dir / "prometheus.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stack.start("prometheus", [binary, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
                               f"--web.listen-address={target}", "--web.enable-lifecycle"], log=log)
    url = f"http://{target}"
    stack.wait_until(lambda: http_ok(f"{url}/-/ready"), "Prometheus", 60)
    return f"{url}  (log: {log})"
