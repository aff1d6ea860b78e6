"""`recsys benchmark movielens`: the rolling-origin backtest on both label variants, as a report.

Variants: ``all`` (every rating is an interaction) and ``rating>=4`` (only ratings of 4 and above
are kept: they are the positives, and the models train on them alone). Each variant gets its own
feature tables and Feast registry under the work directory, then the 12 folds of
``training/backtest.py``. The report names the command, the split statistics, the library versions
and the machine, so that a number in ``docs/benchmarks.md`` can be traced to how it was made.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from feature_repo.store import apply, open_store
from training.backtest import (
    BASELINES,
    RETRIEVAL,
    TWO_STAGE,
    BacktestConfig,
    Fold,
    PairedComparison,
    method_table,
    paired_bootstrap,
    run_backtest,
    source_recall,
)
from training.dataset import Dataset
from training.features import build_feature_tables

VARIANTS = {"all": None, "rating>=4": 4.0}
LIBRARIES = ("numpy", "pandas", "torch", "faiss-cpu", "lightgbm", "onnxruntime", "feast")


@dataclass
class VariantResult:
    name: str
    folds: list[Fold]
    methods: pd.DataFrame
    cold: pd.DataFrame
    sources: pd.DataFrame
    best_baseline: str
    comparison: PairedComparison
    seconds: float


def variant_dataset(dataset: Dataset, min_rating: float | None) -> Dataset:
    if min_rating is None:
        return dataset
    if "rating" not in dataset.interactions.columns:
        raise ValueError("the rating>=4 variant needs a rating column")
    kept = dataset.interactions[dataset.interactions["rating"] >= min_rating].reset_index(drop=True)
    return Dataset(kept, dataset.users, dataset.items, None, dataset.meta)


def run_variant(dataset: Dataset, name: str, work_dir: Path, config: BacktestConfig,
                on_fold: Callable[[int, int], None]) -> VariantResult:
    started = time.perf_counter()
    features_dir = work_dir / name.replace(">=", "_ge_") / "features"
    build_feature_tables(dataset).write(features_dir)
    store = open_store("embedded", features_dir, "benchmark", "redis://127.0.0.1:6379/0")
    apply(store, features_dir)
    folds = run_backtest(dataset, store, config, on_fold)
    methods = method_table(folds)
    best = max([*BASELINES, RETRIEVAL], key=lambda m: methods.loc[m, "ndcg@10"])
    return VariantResult(name, folds, methods, method_table(folds, cold=True), source_recall(folds), best,
                         paired_bootstrap(folds, TWO_STAGE, best), time.perf_counter() - started)


def run_benchmark(dataset: Dataset, work_dir: Path, config: BacktestConfig,
                  on_fold: Callable[[str, int, int], None] = lambda variant, done, total: None) -> list[VariantResult]:
    # One torch thread: on a shared 2-core machine two threads contend, and two-tower training ran
    # 6x slower (26 s instead of 4.3 s for 2 epochs on MovieLens-sized data).
    torch.set_num_threads(1)
    return [run_variant(variant_dataset(dataset, rating), name, work_dir, config,
                        lambda done, total, name=name: on_fold(name, done, total))
            for name, rating in VARIANTS.items()]


METHOD_COLUMNS = ["recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@10 se", "map@10", "hr@10",
                  "coverage@10", "served"]


def _markdown(frame: pd.DataFrame, columns: list[str], index_name: str) -> str:
    lines = [f"| {index_name} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def comparison_line(result: VariantResult) -> str:
    c = result.comparison
    return (f"two-stage vs {c.baseline}: NDCG@10 x{c.ratio:.2f}, mean per-pair difference {c.mean_difference:+.4f}, "
            f"paired bootstrap 95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]")


def split_statistics(dataset: Dataset, result: VariantResult) -> str:
    folds = result.folds
    first, last = (pd.Timestamp(f.cutoff, unit="s").date() for f in (folds[0], folds[-1]))
    warm = sum(len(f.truth) for f in folds)
    cold = sum(len(f.cold_truth) for f in folds)
    truth_items = sum(len(items) for f in folds for items in f.truth.values())
    examples = sum(f.ranker_examples for f in folds)
    return (f"{len(dataset.interactions):,} interactions, {dataset.interactions['user_id'].nunique():,} users, "
            f"{dataset.interactions['item_id'].nunique():,} items; {len(folds)} cutoffs from {first} to {last}; "
            f"{warm} (cutoff, user) test pairs with {truth_items:,} new items in their test windows "
            f"({truth_items / max(warm, 1):.1f} per pair), {cold} cold-start pairs; "
            f"{examples:,} ranker examples over all folds")


def render_report(results: list[VariantResult], datasets: dict[str, Dataset], command: str,
                  total_seconds: float, config: BacktestConfig) -> str:
    versions = ", ".join(f"{lib} {version(lib)}" for lib in LIBRARIES)
    s = config.candidates
    out = [
        "# MovieLens benchmark",
        "",
        "Written by `" + command + "` (`training/benchmark.py`); rerun it to reproduce every number here.",
        "",
        f"Protocol (`training/backtest.py`): rolling origin, {config.folds} cutoffs every {config.step_days} days, "
        f"the last {config.horizon_days} days before the end of the log. At each cutoff every model (two-tower, "
        f"ranker, co-visitation, popularity, features) is trained on interactions before it; the test pairs are "
        f"the users with history before the cutoff who take at least one new item in the next "
        f"{config.horizon_days} days. Items a user had before the cutoff are excluded from recommendations and "
        "truth; items first seen after it stay in the truth. The two-tower model learns from data before "
        f"cutoff - {config.ranker_days} days, the ranker from candidates generated then, labelled by the "
        f"{config.ranker_days} days up to the cutoff. Metrics are pooled over all (cutoff, user) pairs; "
        "coverage@10 is the share of the catalog in some top-10, per fold, averaged; served is the share of "
        "pairs that got any recommendation. `tests/test_backtest.py` checks that changing the log after a "
        "cutoff changes nothing in its fold.",
        "",
        f"Candidates per request: two-tower ANN {s.n_ann}, co-visitation {s.n_covis} (window {s.covis_window} "
        f"events, {s.covis_neighbours} neighbours per item, seeded by the {s.covis_seeds} most recent items), "
        f"recent popularity {s.n_popular}; merged and deduplicated.",
        "",
    ]
    for result in results:
        dataset = datasets[result.name]
        out += [
            f"## Variant `{result.name}`",
            "",
            "Split: " + split_statistics(dataset, result) + ".",
            "",
            _markdown(result.methods, METHOD_COLUMNS, "method"),
            "",
            f"**{comparison_line(result)}**, over {int(result.methods.loc[TWO_STAGE, 'pairs'])} pairs.",
            "",
            "Candidate sources (recall over each source's own list, and over its first 100; the merged set is "
            "ordered by the ranker, so its recall@100 is two-stage recall@100):",
            "",
            _markdown(result.sources, ["candidates", "recall@all", "recall@100"], "source"),
            "",
            "Cold-start pairs (no history before the cutoff; served from popularity candidates and user features):",
            "",
            _markdown(result.cold, ["recall@10", "recall@100", "ndcg@10", "ndcg@10 se", "hr@10", "served"], "method")
            if len(result.cold) else "(none)",
            "",
            f"Time: {result.seconds:.0f} s for this variant.",
            "",
        ]
    cores = os.cpu_count()
    out += [
        "## Machine and versions",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {cores} cores (shared with other work "
        f"while this ran); {versions}. Whole benchmark: {total_seconds:.0f} s.",
        "",
    ]
    return "\n".join(out)


def console_table(result: VariantResult) -> str:
    header = f"{'method':<20}" + "".join(f"{c:>12}" for c in METHOD_COLUMNS)
    lines = [f"variant {result.name}", header]
    for name, row in result.methods.iterrows():
        lines.append(f"{name:<20}" + "".join(f"{row[c]:>12.4f}" for c in METHOD_COLUMNS))
    lines.append(comparison_line(result))
    for name, row in result.sources.iterrows():
        lines.append(f"candidates {name:<24} n={row['candidates']:>6.1f}  recall@all {row['recall@all']:.4f}  "
                     f"recall@100 {row['recall@100']:.4f}")
    return "\n".join(lines)
