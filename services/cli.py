"""The `recsys` command line: the composition root that wires data, features, training and serving.

Every command works in one work directory (``--home``, or ``RECSYS_HOME``, default
``./recsys-work``), so ``recsys demo --no-serve`` then ``recsys serve`` serves the bundle the demo
built. Errors are printed as one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.settings import Settings

app = typer.Typer(help="A two-stage recommender: simulate or import data, build features, train, serve.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create the dataset in the work directory.", no_args_is_help=True)
features_app = typer.Typer(help="Feast feature store operations.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Reproducible quality benchmarks on public data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(benchmark_app, name="benchmark")

console = Console(stderr=True, soft_wrap=True)
Home = Annotated[Path | None, typer.Option("--home", help="Work directory (default: $RECSYS_HOME or ./recsys-work).")]
ImpressionLogs = Annotated[Path | None, typer.Option(
    help="Impression log or logs directory (default: the work directory's logs).")]
FeedbackLog = Annotated[Path | None, typer.Option(help="Feedback log (default: feedback.jsonl beside it).")]


class CliError(Exception):
    """An error to show the user as one line."""


def is_user_error(exc: Exception) -> bool:
    """Errors caused by input or state the user controls (imported here, after the command ran,
    so that merely wrapping a command imports neither Feast nor the training stack)."""
    from feature_repo.store import FeatureStoreError
    from training.bundle import BundleError

    return isinstance(exc, CliError | FeatureStoreError | BundleError | ValueError | FileNotFoundError | KeyError)


def handle_errors(command: Callable) -> Callable:
    """Turn the errors a user can cause into a one-line message and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if not is_user_error(exc):
                raise
            console.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper


def settings_for(home: Path | None) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"home": home}) if home else settings


def parse_time(value: str) -> int:
    """Unix seconds or ISO-8601 (UTC when no zone is given) → unix seconds."""
    try:
        return int(float(value))
    except ValueError:
        pass
    try:
        return int(pd.Timestamp(value).tz_localize("UTC").timestamp() if pd.Timestamp(value).tzinfo is None
                   else pd.Timestamp(value).timestamp())
    except ValueError as exc:
        raise CliError(f"cannot parse time {value!r}: use unix seconds or ISO-8601") from exc


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def open_feature_store(settings: Settings):
    from feature_repo.store import open_store

    return open_store(settings.profile, settings.features_dir, settings.project, settings.redis_url)


# --- data ---------------------------------------------------------------------------------------


def generate_data(settings: Settings, size: str, seed: int, out: Path | None) -> Path:
    from training.simulator import SimConfig, Simulator

    config = SimConfig.preset(size, seed=seed)
    target = out or settings.data_dir
    with progress_bar() as bar:
        task = bar.add_task(f"simulating {size} world", total=config.n_days)
        dataset = Simulator(config).generate(progress=lambda done, total: bar.update(task, completed=done))
    dataset.save(target)
    console.print(f"{len(dataset.interactions):,} interactions, {len(dataset.users):,} users, "
                  f"{len(dataset.items):,} items → {target}")
    return target


@data_app.command("generate")
@handle_errors
def data_generate(
    size: Annotated[str, typer.Option(help="tiny, small or medium.")] = "small",
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: the work directory's data).")] = None,
    home: Home = None,
) -> None:
    """Simulate users, items and clicks from the known click model."""
    generate_data(settings_for(home), size, seed, out)


@data_app.command("import")
@handle_errors
def data_import(
    interactions: Annotated[Path | None, typer.Option(help="CSV/Parquet: user_id, item_id, ts[, rating].")] = None,
    users: Annotated[Path | None, typer.Option(help="CSV/Parquet: user_id + feature columns.")] = None,
    items: Annotated[Path | None, typer.Option(help="CSV/Parquet: item_id + feature columns.")] = None,
    movielens: Annotated[Path | None, typer.Option(help="A MovieLens latest-small directory instead.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: the work directory's data).")] = None,
    home: Home = None,
) -> None:
    """Import your own data (or MovieLens) into the normalised schema."""
    from training.importer import import_files, load_movielens

    if (interactions is None) == (movielens is None):
        raise CliError("give either --interactions (with optional --users/--items) or --movielens")
    dataset = load_movielens(movielens) if movielens else import_files(interactions, users, items)
    target = out or settings_for(home).data_dir
    dataset.save(target)
    console.print(f"{len(dataset.interactions):,} interactions, {len(dataset.users):,} users, "
                  f"{len(dataset.items):,} items → {target}")


# --- features -----------------------------------------------------------------------------------


def build_features(settings: Settings, data_dir: Path):
    """Compute the feature tables from a data directory, write them and register the definitions."""
    from feature_repo.store import apply
    from training.dataset import Dataset
    from training.features import build_feature_tables

    dataset = Dataset.load(data_dir)
    build_feature_tables(dataset).write(settings.features_dir)
    store = open_feature_store(settings)
    apply(store, settings.features_dir)
    return dataset, store


def materialize_features(settings: Settings, store, dataset) -> None:
    """Load every entity's latest row up to the instant serving starts (the snapshot after the data).

    The window starts at the epoch: static rows (item attributes) can be far older than the data.
    """
    from feature_repo.store import materialize
    from training.features import next_snapshot

    materialize(store, 0, next_snapshot(dataset.end_ts))


@features_app.command("apply")
@handle_errors
def features_apply(data: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
                   home: Home = None) -> None:
    """Build the feature tables from the data and register the Feast definitions."""
    settings = settings_for(home)
    build_features(settings, data or settings.data_dir)
    console.print(f"feature tables and registry in {settings.features_dir}")


@features_app.command("materialize")
@handle_errors
def features_materialize(home: Home = None) -> None:
    """Load the latest feature values into the online store (SQLite or Redis, per profile)."""
    from training.dataset import Dataset

    settings = settings_for(home)
    materialize_features(settings, open_feature_store(settings), Dataset.load(settings.data_dir))
    console.print(f"materialized into the {settings.profile} online store")


@features_app.command("historical")
@handle_errors
def features_historical(
    entity_df: Annotated[Path, typer.Option("--entity-df", help="CSV/Parquet: user_id/item_id, event_timestamp.")],
    out: Annotated[Path, typer.Option(help="Output CSV or Parquet.")],
    home: Home = None,
) -> None:
    """Point-in-time join of every feature of the entity frame's keys."""
    from feature_repo.definitions import ITEM_ACTIVITY, ITEM_ATTRIBUTES, TIMESTAMP, USER_ACTIVITY, feature_refs
    from feature_repo.store import historical

    frame = pd.read_parquet(entity_df) if entity_df.suffix in (".parquet", ".pq") else pd.read_csv(entity_df)
    if TIMESTAMP not in frame.columns:
        raise CliError(f"{entity_df}: needs an {TIMESTAMP!r} column")
    views = ([USER_ACTIVITY] if "user_id" in frame.columns else []) + (
        [ITEM_ACTIVITY, ITEM_ATTRIBUTES] if "item_id" in frame.columns else [])
    if not views:
        raise CliError(f"{entity_df}: needs a user_id or item_id column")
    for key in ("user_id", "item_id"):
        if key in frame.columns:
            frame[key] = frame[key].astype(str)
    try:
        frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{entity_df}: column {TIMESTAMP!r}: {exc}") from exc
    result = historical(open_feature_store(settings_for(home)), frame, feature_refs(*views))
    result.to_parquet(out, index=False) if out.suffix in (".parquet", ".pq") else result.to_csv(out, index=False)
    console.print(f"{len(result):,} rows → {out}")


# --- training -----------------------------------------------------------------------------------


def train(settings: Settings, data_dir: Path, out: Path | None = None):
    from monitoring.drift_reference import write_reference
    from training.pipeline import TrainConfig, train_bundle

    dataset, store = build_features(settings, data_dir)
    with progress_bar() as bar:
        task = bar.add_task("training", total=None)
        epochs = bar.add_task("two-tower epochs", total=TrainConfig().two_tower.epochs)
        result = train_bundle(
            dataset, store, out or settings.bundles_dir, TrainConfig(),
            on_step=lambda step: bar.update(task, description=step),
            on_epoch=lambda done, total, loss: bar.update(epochs, completed=done,
                                                          description=f"two-tower epochs (loss {loss:.3f})"),
            extra_artifacts=write_reference,
        )
    console.print(result.evaluation.table())
    parity = result.parity
    console.print(f"ONNX parity: max |diff| {parity.max_abs_diff:.2e}, rows above 1e-5 "
                  f"{parity.share_rows_above_1e5:.2%}, top-10 mismatches {parity.top10_mismatch_share:.2%}")
    console.print(f"bundle {result.manifest.version} → {result.path}")
    return dataset, store, result


@app.command("train")
@handle_errors
def train_command(
    data: Annotated[Path | None, typer.Option(help="Data directory (default: the work directory's data).")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory to publish the bundle in.")] = None,
    home: Home = None,
) -> None:
    """Train a bundle (embeddings, index, ranker) and evaluate it on a temporal split."""
    settings = settings_for(home)
    train(settings, data or settings.data_dir, out)


@app.command("evaluate")
@handle_errors
def evaluate_command(
    bundle: Annotated[Path | None, typer.Option(help="Bundle (default: the newest).")] = None,
    home: Home = None,
) -> None:
    """Recompute the bundle's offline metrics on its temporal split, from the work directory's data."""
    from serving.model import load_model
    from training.bundle import latest_bundle
    from training.candidates import build_candidates_model
    from training.dataset import Dataset
    from training.evaluate import evaluate

    settings = settings_for(home)
    model = load_model(bundle or latest_bundle(settings.bundles_dir))
    dataset, split = Dataset.load(settings.data_dir), model.manifest.training_cutoff_ts
    sources = build_candidates_model(model.retrieval, dataset.interactions, split, model.candidates.settings)
    evaluation = evaluate(dataset, sources, open_feature_store(settings), split, model.ranker.score)
    print(evaluation.report.table())


@app.command("recommend-batch")
@handle_errors
def recommend_batch_command(
    users: Annotated[Path, typer.Option(help="User ids, one per line.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Unix seconds or ISO-8601.")],
    out: Annotated[Path, typer.Option(help="Output CSV: user_id,item_id,rank,score.")],
    k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    bundle: Annotated[Path | None, typer.Option(help="Bundle (default: the newest).")] = None,
    home: Home = None,
) -> None:
    """Top-K per user as of a time, using only data before it and excluding items already seen."""
    from serving.model import load_model
    from training.batch import recommend_batch
    from training.bundle import latest_bundle
    from training.candidates import build_candidates_model
    from training.dataset import Dataset

    settings = settings_for(home)
    user_ids = [line.strip() for line in users.read_text().splitlines() if line.strip()]
    if not user_ids:
        raise CliError(f"{users}: no user ids")
    model = load_model(bundle or latest_bundle(settings.bundles_dir))
    dataset, when = Dataset.load(settings.data_dir), parse_time(as_of)
    # Co-visitation and popularity as of --as-of (the bundle's own are as of the end of its data).
    sources = build_candidates_model(model.retrieval, dataset.interactions, when, model.candidates.settings)
    recs = recommend_batch(dataset, sources, model.ranker.score, open_feature_store(settings),
                           model.manifest.training_cutoff_ts, user_ids, when, k)
    recs.to_csv(out, index=False)
    console.print(f"{len(recs):,} recommendations for {len(user_ids):,} users → {out}")


@benchmark_app.command("movielens")
@handle_errors
def benchmark_movielens(
    data: Annotated[Path, typer.Option(help="A MovieLens latest-small directory (ratings.csv, movies.csv).")],
    out: Annotated[Path, typer.Option(help="Markdown report to write.")] = Path("docs/benchmarks.md"),
    folds: Annotated[int, typer.Option(min=1, help="Rolling-origin cutoffs.")] = 12,
    home: Home = None,
) -> None:
    """Rolling-origin backtest of two-stage vs baselines on MovieLens; prints the table, writes the report."""
    import time

    from training.backtest import BacktestConfig
    from training.benchmark import VARIANTS, console_table, render_report, run_benchmark, variant_dataset
    from training.importer import load_movielens

    started = time.perf_counter()
    settings = settings_for(home)
    dataset = load_movielens(data)
    config = BacktestConfig(folds=folds)
    with progress_bar() as bar:
        task = bar.add_task("backtest", total=folds * len(VARIANTS))
        results = run_benchmark(dataset, settings.home / "benchmark", config,
                                lambda variant, done, total: bar.update(task, advance=1,
                                                                        description=f"{variant}: fold {done}/{total}"))
    total = time.perf_counter() - started
    for result in results:
        print(console_table(result))
    datasets = {name: variant_dataset(dataset, rating) for name, rating in VARIANTS.items()}
    command = f"recsys benchmark movielens --data {data}" + (f" --folds {folds}" if folds != 12 else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(results, datasets, command, total, config))
    console.print(f"benchmark done in {total:.0f} s → {out}")


@app.command("skew")
@handle_errors
def skew_command(
    logs: Annotated[Path, typer.Option(help="Impression log (JSON lines) with the served features.")],
    threshold: Annotated[float, typer.Option(help="Flag a feature above this mismatch rate.")] = 0.0,
    prometheus_out: Annotated[Path | None, typer.Option(help="Also write Prometheus gauges to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    home: Home = None,
) -> None:
    """Training/serving skew: served feature values vs the offline point-in-time join. Exit 3 if any is flagged."""
    from monitoring.skew import check_skew, write_prometheus
    from serving.event_log import read_records

    report = check_skew(open_feature_store(settings_for(home)), read_records(logs), threshold)
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.table())
    if prometheus_out:
        write_prometheus(report, prometheus_out)
    if report.flagged:
        raise typer.Exit(3)


@app.command("drift")
@handle_errors
def drift_command(
    logs: ImpressionLogs = None,
    feedback: FeedbackLog = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle whose reference to compare with (default: the "
                                                     "newest).")] = None,
    window_s: Annotated[float, typer.Option("--window-s", min=1, help="The window: the log's last seconds.")] = 3600.0,
    tolerance: Annotated[float, typer.Option(min=0.0, max=1.0, help="CTR drop (relative) that counts.")] = 0.05,
    min_items: Annotated[int, typer.Option("--min-items", min=1, help="Shown items needed on each side of the "
                                                                       "CTR comparison.")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    home: Home = None,
) -> None:
    """Drift of the log's last window against the bundle's reference, and a retrain decision. Exit 3: retrain."""
    from monitoring.drift_reference import DriftReference
    from monitoring.drift_report import drift_decision
    from training.bundle import DRIFT_REFERENCE, latest_bundle

    settings = settings_for(home)
    path = (bundle or latest_bundle(settings.bundles_dir)) / DRIFT_REFERENCE
    if not path.exists():
        raise CliError(f"{path.parent}: the bundle has no drift reference (trained before drift monitoring); retrain")
    decision = drift_decision(logs or settings.logs_dir, feedback, DriftReference.load(path), window_s, tolerance,
                              min_items)
    print(json.dumps(decision.to_dict(), indent=2) if as_json else decision.table())
    if decision.retrain:
        raise typer.Exit(3)


# --- the whole stack as local processes (docker-compose.yml without Docker) ---------------------


@app.command("up")
@handle_errors
def up_command(
    size: Annotated[str, typer.Option(help="Simulator size when there is no data: tiny, small or medium.")] = "small",
    seed: int = 0,
    port: Annotated[int | None, typer.Option(help="API port (default: $RECSYS_PORT or 8000).")] = None,
    prometheus_port: Annotated[int, typer.Option(help="Prometheus port.")] = 9090,
    scrape_interval: Annotated[str | None, typer.Option(
        help="Override infra/prometheus/prometheus.yml's scrape and evaluation interval, e.g. 1s.")] = None,
    no_prometheus: Annotated[bool, typer.Option("--no-prometheus", help="Do not start Prometheus.")] = False,
    traffic: Annotated[bool, typer.Option("--traffic", help="Also run the traffic generator.")] = False,
    traffic_rate: Annotated[float, typer.Option(help="Traffic: /recommend requests per second.")] = 5.0,
    traffic_duration: Annotated[float, typer.Option(help="Traffic: seconds before it stops by itself.")] = 3600.0,
    no_serve: Annotated[bool, typer.Option(
        "--no-serve", help="Only make the work directory servable (the compose trainer), then exit.")] = False,
    home: Home = None,
) -> None:
    """The docker-compose stack as local processes: trainer steps if no bundle, API, Prometheus; Ctrl-C stops all.

    Same ports and RECSYS_* settings as docker-compose.yml; Redis when RECSYS_REDIS_URL answers (or
    RECSYS_PROFILE says so), the embedded SQLite store otherwise.
    """
    from services.stack import UpOptions, up

    settings = settings_for(home)
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    options = UpOptions(size=size, seed=seed, prometheus=not no_prometheus, prometheus_port=prometheus_port,
                        scrape_interval=scrape_interval, traffic=traffic, traffic_rate=traffic_rate,
                        traffic_duration=traffic_duration, serve=not no_serve)
    code = up(settings, options, say=lambda line: console.print(line, highlight=False, markup=False))
    if code:
        raise typer.Exit(code)


# --- replay, simulation and experiments -----------------------------------------------------------


def write_report(report: dict, out: Path | None) -> None:
    from services.replay import dumps

    text = dumps(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    sys.stdout.write(text)


@app.command("replay")
@handle_errors
def replay_command(
    log: Annotated[Path, typer.Argument(help="Impression log (JSON lines) or logs directory, or a request file "
                                             "(JSON lines: user_id[, k, context, ts]).")],
    url: Annotated[str | None, typer.Option(help="Server to replay against, e.g. http://127.0.0.1:8000.")] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Fixed arrival rate, requests/s (open loop).")] = None,
    speedup: Annotated[float | None, typer.Option(
        min=0.001, help="Logged inter-arrival times divided by this factor (open loop).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Closed loop: this many requests in flight, as fast as the server answers.")] = None,
    duration: Annotated[float | None, typer.Option(
        min=0.001, help="Seconds to run (the log repeats); default: the log once.")] = None,
    connections: Annotated[int, typer.Option(min=1, help="Most open keep-alive connections.")] = 256,
    timeout: Annotated[float, typer.Option(min=0.001, help="Per-request timeout, seconds.")] = 10.0,
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    shadow_bundle: Annotated[Path | None, typer.Option(
        "--shadow-bundle", help="Offline: the slates this bundle would have served on the logged requests.")] = None,
    shadow_policy: Annotated[str, typer.Option("--shadow-policy", help="Its policy (default greedy).")] = "greedy",
    shadow_params: Annotated[str, typer.Option("--shadow-params", help="Its params (JSON).")] = "{}",
    feedback: Annotated[Path | None, typer.Option(help="Feedback log for the shadow OPE estimate.")] = None,
    seed: int = 0,
    home: Home = None,
) -> None:
    """Replay logged requests against a server (open loop; a JSON report of rate, latency, errors), or with
    --shadow-bundle, compute offline what another bundle would have served (deterministic JSON report)."""
    if shadow_bundle is not None:
        from services.replay import shadow_report

        out, timings = shadow_report(log, shadow_bundle, open_feature_store(settings_for(home)), shadow_policy,
                                     parse_params(shadow_params, "--shadow-params"), feedback, seed=seed)
        console.print(f"shadow timings (not in the report): {json.dumps(timings)}", highlight=False)
        write_report(out, report)
        return
    from services.replay import load_requests, run, run_load

    if url is None:
        raise CliError("--url is required (or --shadow-bundle for an offline replay)")
    chosen = [(name, value) for name, value in (("rate", rate), ("speedup", speedup), ("concurrency", concurrency))
              if value is not None]
    if len(chosen) > 1:
        raise CliError("give at most one of --rate, --speedup, --concurrency")
    mode, value = chosen[0] if chosen else ("rate", 100.0)
    requests = load_requests(log)
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("replaying")

        def show(stats, elapsed: float) -> None:
            rate_now = stats.done / elapsed if elapsed > 0 else 0.0
            errors = sum(n for code, n in stats.status.items() if not code.startswith("2")) + sum(
                stats.transport.values())
            bar.update(task, description=f"replay {mode}={value:g}: sent {stats.sent:,}, done {stats.done:,}, "
                                         f"{rate_now:,.0f}/s, errors {errors:,}")

        out = run(run_load(requests, url, mode, float(value), duration, max_connections=connections,
                           timeout=timeout, progress=show))
    out["log"] = str(log)
    write_report(out, report)


@app.command("simulate")
@handle_errors
def simulate_command(
    url: Annotated[str, typer.Option(help="Server to play against, e.g. http://127.0.0.1:8000.")],
    users: Annotated[int, typer.Option(min=1, help="Simulated users taking part.")] = 100,
    requests: Annotated[int, typer.Option(min=1, help="Requests to send.")] = 500,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Requests/s (default: back to back).")] = None,
    k: Annotated[int, typer.Option(min=1, max=100)] = 10,
    seed: int = 0,
    drift_day: Annotated[int | None, typer.Option(
        "--drift-day", min=0, help="Shift a segment's taste from this simulated day on (concept drift).")] = None,
    drift_segment: Annotated[int, typer.Option("--drift-segment", min=0, max=3)] = 0,
    drift_strength: Annotated[float, typer.Option("--drift-strength", min=0.0, max=1.0)] = 0.8,
    data: Annotated[Path | None, typer.Option(help="Simulator data dir (default: the work directory's data).")] = None,
    home: Home = None,
) -> None:
    """Closed loop: the simulator's users request, click by the true click model, and post feedback."""
    from services.simulate import simulate

    with progress_bar() as bar:
        task = bar.add_task("simulating users", total=requests)
        summary = simulate(url, data or settings_for(home).data_dir, users, requests, rate, seed, k, drift_day,
                           drift_segment, drift_strength, progress=lambda done, total: bar.update(task, completed=done))
    print(json.dumps(summary, indent=2, sort_keys=True))


@app.command("ab-report")
@handle_errors
def ab_report_command(
    logs: ImpressionLogs = None,
    feedback: FeedbackLog = None,
    experiments: Annotated[Path | None, typer.Option(
        help="Experiments config for the shares and control (default: $RECSYS_EXPERIMENTS).")] = None,
    control: Annotated[str | None, typer.Option(help="Control arm (default: the config's, or the first).")] = None,
    mde: Annotated[float | None, typer.Option(min=0.0001, help="Target relative MDE, e.g. 0.05: users needed.")] = None,
    alpha: Annotated[float, typer.Option(min=0.0001, max=0.5)] = 0.05,
    power: Annotated[float, typer.Option(min=0.5, max=0.9999)] = 0.8,
    window_s: Annotated[float, typer.Option("--window-s", help="Attribution window after an impression.")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    home: Home = None,
) -> None:
    """Per-arm CTR and clicks per request with 95% CIs, lifts vs control, SRM check and MDE."""
    from monitoring.ab import ab_report, table
    from services.replay import dumps, round_floats
    from serving.experiments import load_experiment

    settings = settings_for(home)
    config = experiments or settings.experiments
    experiment = load_experiment(config) if config else None
    raw = ab_report(logs or settings.logs_dir, feedback, experiment.shares if experiment else None,
                    control or (experiment.control_arm if experiment else None), window_s,
                    alpha=alpha, power=power, mde=mde)
    out = round_floats(raw)
    if report is not None:
        report.write_text(dumps(out))
    print(dumps(out) if as_json else table(raw), end="\n" if not as_json else "")


# --- serving ------------------------------------------------------------------------------------


def run_server(settings: Settings) -> None:
    # Metrics in multiprocess mode (monitoring/metrics.py), in a folder of this server's own: set
    # before prometheus_client is first imported, inherited by the worker processes.
    metrics_dir = tempfile.mkdtemp(prefix="recsys-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_server(settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_server(settings: Settings) -> None:
    import uvicorn

    from services.serving_process import create_app  # first: keeps torch out of this process
    from serving.model import load_model
    from training.bundle import latest_bundle

    load_model(settings.bundle or latest_bundle(settings.bundles_dir))  # refuse a bad bundle before binding
    console.print(f"serving on http://{settings.host}:{settings.port} with {settings.workers} worker process(es)"
                  "  (try /recommend?user_id=...&k=10)")
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                    access_log=False)
        return
    # Worker processes build their app from the environment: hand them this command's settings.
    for name, value in settings.model_dump(exclude_defaults=True).items():
        os.environ[f"RECSYS_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    # uvicorn kills a worker that misses a 5 s health check, and a saturated worker (or one still
    # loading 100k items' features) can miss it: a minute tells a hung worker from a busy one.
    uvicorn.run("services.serving_process:app_from_environment", factory=True, workers=settings.workers,
                host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_worker_healthcheck=60)


@app.command("serve")
@handle_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle (default: the newest).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: 1).")] = None,
    home: Home = None,
) -> None:
    """Serve the API on a bundle."""
    overrides = {k: v for k, v in {"host": host, "port": port, "bundle": bundle, "workers": workers}.items()
                 if v is not None}
    run_server(settings_for(home).model_copy(update=overrides))


@app.command("demo")
@handle_errors
def demo(
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Stop after writing the bundle.")] = False,
    size: Annotated[str, typer.Option(help="Simulator size: tiny, small or medium.")] = "small",
    seed: int = 0,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    home: Home = None,
) -> None:
    """Embedded default end to end: simulate → features → materialize → train → bundle → serve."""
    started = datetime.now()
    settings = settings_for(home)
    data_dir = generate_data(settings, size, seed, None)
    dataset, store, result = train(settings, data_dir)
    materialize_features(settings, store, dataset)
    console.print(f"demo pipeline done in {(datetime.now() - started).total_seconds():.1f} s")
    example_user = json.loads((result.path / "user_ids.json").read_text())[0]
    console.print(f"example: curl 'localhost:{port or settings.port}/recommend?user_id={example_user}&k=10'")
    if not no_serve:
        # Serve from a fresh process: this one has imported torch for training, serving must not.
        command = [sys.executable, "-m", "services.cli", "serve", "--home", str(settings.home)]
        os.execv(sys.executable, command + (["--port", str(port)] if port else []))


# --- off-policy evaluation ----------------------------------------------------------------------


def parse_params(value: str, option: str) -> dict:
    try:
        params = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option}: not JSON ({exc.msg}): {value!r}") from exc
    if not isinstance(params, dict):
        raise CliError(f"{option}: expected a JSON object, got {value!r}")
    return params


@app.command("ope")
@handle_errors
def ope_command(
    logs: Annotated[Path | None, typer.Option(
        help="Impression log (JSON lines) or logs directory, or flattened rows (CSV/Parquet; see docs/ope.md). "
             "Default: the work directory's logs.")] = None,
    feedback: FeedbackLog = None,
    window_s: Annotated[float, typer.Option("--window-s", help="Attribution window after an impression.")] = 3600.0,
    event: Annotated[list[str] | None, typer.Option(help="Feedback event counted as reward (repeatable).")] = None,
    target_policy: Annotated[str | None, typer.Option(
        "--target-policy", "--candidate", help="Policy to evaluate on the logged candidates, e.g. softmax.")] = None,
    target_params: Annotated[str, typer.Option(
        "--target-params", "--candidate-params", help="Its params as a JSON object.")] = "{}",
    candidate_bundle: Annotated[Path | None, typer.Option(
        "--candidate-bundle", help="Rank by this bundle's scores, recomputed for each logged request (the "
                                   "target is this bundle + --candidate policy, default greedy).")] = None,
    baseline: Annotated[str | None, typer.Option(
        help="Safe rollout: 'current' (the logged traffic) or a policy name; refuse the candidate if its lower "
             "95% bound is more than --tolerance below the baseline's estimate.")] = None,
    baseline_params: Annotated[str, typer.Option(help="The baseline policy's params (JSON).")] = "{}",
    estimator: Annotated[str, typer.Option(help="Estimator the rollout check uses.")] = "dr",
    tolerance: Annotated[float, typer.Option(min=0.0, max=1.0, help="Allowed loss, share of the baseline.")] = 0.05,
    clip: Annotated[float | None, typer.Option(min=0.0, help="Clip IPS weights at this value.")] = None,
    switch_tau: Annotated[float, typer.Option(min=0.0, help="Switch-DR: DM for rows with larger weights.")] = 10.0,
    bootstrap: Annotated[int, typer.Option(min=50, help="Bootstrap resamples for the intervals.")] = 500,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    home: Home = None,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DM, DR, Switch-DR, SNDR) from logs; with --baseline, a rollout gate."""
    from monitoring.ope import collect, counts_from_rows, evaluate, gate, logged_evidence
    from serving.event_log import TARGET_PROPENSITY, load_logs
    from serving.exploration import make_policy

    flat = load_logs(logs or settings_for(home).logs_dir, feedback, window_s, event or ["click"])
    options = {"clip": clip, "switch_tau": switch_tau, "n_boot": bootstrap, "seed": seed}

    def report_for(name: str, params_json: str, option: str, target_scores=None, label: str = ""):
        params = parse_params(params_json, option)
        policy = make_policy(name, params, counts=counts_from_rows(flat.rows))
        return evaluate(collect(flat, policy, target_scores), f"{label}{name} {json.dumps(params, sort_keys=True)}",
                        **options)

    if candidate_bundle:
        from monitoring.rescoring import bundle_scores
        from serving.model import load_model

        target_policy = target_policy or "greedy"
        scores = bundle_scores(flat, load_model(candidate_bundle), open_feature_store(settings_for(home)))
        report = report_for(target_policy, target_params, "--target-params", scores, f"{candidate_bundle.name} + ")
    elif target_policy:
        report = report_for(target_policy, target_params, "--target-params")
    elif TARGET_PROPENSITY in flat.rows.columns:
        report = evaluate(collect(flat), "per-row target_propensity", **options)
    else:
        report = evaluate(logged_evidence(flat), "current (the logged traffic)", **options)
    out: dict = {"report": report.to_dict()}
    decision = None
    if baseline is not None:
        if not target_policy and TARGET_PROPENSITY not in flat.rows.columns:
            raise CliError("--baseline needs a candidate: --candidate NAME or rows with target_propensity")
        if baseline == "current":
            reference = evaluate(logged_evidence(flat), "current", **options).estimates["ips"]
        else:
            reference = report_for(baseline, baseline_params, "--baseline-params").estimates[estimator]
        decision = gate(report, reference, estimator, tolerance)
        out["baseline"] = {"name": baseline, "value": reference.value, "low": reference.low, "high": reference.high}
        out["decision"] = {"accepted": decision.accepted, "reason": decision.reason}
    print(json.dumps(out, indent=2) if as_json else report.table())
    if decision is not None:
        print(decision.reason, file=sys.stderr)
        if not decision.accepted:
            raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
