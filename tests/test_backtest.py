"""The rolling-origin backtest: nothing after a cutoff reaches its fold, and the pooled statistics."""

from __future__ import annotations

import numpy as np
import pytest

from feature_repo.store import apply, open_store
from training.backtest import (
    BASELINES,
    MERGED,
    RETRIEVAL,
    TWO_STAGE,
    BacktestConfig,
    Fold,
    cutoffs,
    fold_truth,
    method_table,
    paired_bootstrap,
    run_fold,
    source_recall,
)
from training.candidates import SOURCES, CandidateSettings
from training.dataset import Dataset
from training.features import DAY, build_feature_tables
from training.ranker import RankerConfig
from training.simulator import SimConfig, Simulator
from training.two_tower import TwoTowerConfig

CONFIG = BacktestConfig(folds=2, step_days=7, horizon_days=7, ranker_days=7,
                        candidates=CandidateSettings(n_ann=50, n_covis=30, n_popular=20),
                        two_tower=TwoTowerConfig(epochs=2), ranker=RankerConfig(n_trees=20, threads=1))


def store_for(dataset: Dataset, directory):
    build_feature_tables(dataset).write(directory)
    store = open_store("embedded", directory, "backtest", "redis://127.0.0.1:6379/0")
    apply(store, directory)
    return store


def perturbed_after(dataset: Dataset, cutoff: int, seed: int) -> Dataset:
    """The same logs before ``cutoff``; after it, items shuffled between events, every other event dropped,
    and the impressions gone."""
    frame = dataset.interactions.copy()
    after = np.flatnonzero(frame["ts"].to_numpy() >= cutoff)
    rng = np.random.default_rng(seed)
    frame.loc[after, "item_id"] = rng.permutation(frame.loc[after, "item_id"].to_numpy())
    frame = frame.drop(index=after[::2]).reset_index(drop=True)
    impressions = dataset.impressions[dataset.impressions["ts"] < cutoff]
    return Dataset(frame, dataset.users, dataset.items, impressions, dataset.meta)


@pytest.fixture(scope="module")
def world():
    return Simulator(SimConfig.preset("tiny", seed=3)).generate()


def test_cutoffs_step_back_from_one_horizon_before_the_end(world) -> None:
    config = BacktestConfig(folds=3, step_days=7, horizon_days=5)
    points = cutoffs(world, config)
    assert points == sorted(points) and len(points) == 3
    assert all(p % DAY == 0 for p in points) and np.all(np.diff(points) == 7 * DAY)
    assert points[-1] + 5 * DAY <= world.end_ts + 1


def test_nothing_after_the_cutoff_changes_a_fold(world, tmp_path) -> None:
    cutoff = cutoffs(world, CONFIG)[-1]
    original = run_fold(world, store_for(world, tmp_path / "a"), cutoff, CONFIG)
    changed_world = perturbed_after(world, cutoff, seed=1)
    assert not changed_world.interactions.equals(world.interactions)
    changed = run_fold(changed_world, store_for(changed_world, tmp_path / "b"), cutoff, CONFIG)
    assert original.ranker_examples == changed.ranker_examples > 0
    assert original.catalog == changed.catalog
    common = set(original.truth) & set(changed.truth)
    assert len(common) >= 0.5 * len(original.truth) > 0
    for method in [*BASELINES, RETRIEVAL, TWO_STAGE]:
        for user in common:
            assert original.rankings[method][user] == changed.rankings[method][user], (method, user)
    for source in [*SOURCES, MERGED]:
        for user in common:
            assert original.sources[source][user] == changed.sources[source][user], (source, user)
    # ... while the test window itself did change
    assert original.truth != changed.truth


def test_fold_truth_excludes_items_had_before_and_separates_cold_users(world) -> None:
    cutoff = cutoffs(world, CONFIG)[-1]
    seen, warm, cold = fold_truth(world.interactions, cutoff, 7)
    assert warm and all(not items & seen[u] for u, items in warm.items())
    assert not set(cold) & set(seen)


def fold(truth: dict, rankings: dict) -> Fold:
    return Fold(cutoff=0, truth=truth, cold_truth={}, rankings=rankings, cold_rankings={},
                sources={s: {} for s in [*SOURCES, MERGED]}, catalog=10, ranker_examples=0)


def test_pooled_metrics_and_paired_bootstrap_on_hand_folds() -> None:
    truth = {"u1": {"a"}, "u2": {"b"}, "u3": {"c"}}
    better = {"u1": ["a"], "u2": ["b"], "u3": ["x", "c"]}
    worse = {"u1": ["x", "a"], "u2": [], "u3": ["x"]}
    folds = [fold(truth, {"better": better, "worse": worse}), fold({"u4": {"d"}}, {"better": {"u4": ["d"]},
                                                                                  "worse": {"u4": ["d"]}})]
    table = method_table(folds)
    assert table.loc["better", "pairs"] == table.loc["worse", "pairs"] == 4
    gain2 = 1 / np.log2(3)
    assert table.loc["better", "ndcg@10"] == pytest.approx((1 + 1 + gain2 + 1) / 4)
    assert table.loc["worse", "ndcg@10"] == pytest.approx((gain2 + 0 + 0 + 1) / 4)
    assert table.loc["worse", "served"] == pytest.approx(3 / 4)
    assert table.loc["better", "hr@10"] == 1.0
    assert table.loc["better", "map@10"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert table.loc["better", "coverage@10"] == pytest.approx(np.mean([4 / 10, 1 / 10]))
    comparison = paired_bootstrap(folds, "better", "worse", resamples=2000, seed=0)
    assert comparison.mean_difference == pytest.approx((1 - gain2 + 1 + gain2 + 0) / 4)
    assert 0 < comparison.ci_low < comparison.mean_difference < comparison.ci_high
    assert paired_bootstrap(folds, "better", "worse", resamples=2000, seed=0) == comparison  # seeded


def test_source_recall_counts_each_source_over_its_own_list() -> None:
    f = fold({"u1": {"a", "b"}}, {})
    f.sources = {"ann": {"u1": ["a", "x"]}, "covis": {"u1": ["b"]}, "popular": {"u1": []},
                 MERGED: {"u1": ["x", "b", "a"]}}
    table = source_recall([f])
    assert table.loc["ann", "recall@all"] == 0.5 and table.loc["covis", "recall@all"] == 0.5
    assert table.loc["popular", "recall@all"] == 0.0 and table.loc[MERGED, "recall@all"] == 1.0
    assert table.loc[MERGED, "candidates"] == 3
