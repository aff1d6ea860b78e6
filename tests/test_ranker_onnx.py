"""The ONNX ranker must reproduce LightGBM, and the parity gate must tell a faithful export from a wrong one."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from training.ranker_onnx import (
    MAX_ABS_DIFF,
    MAX_TOP10_MISMATCH_SHARE,
    OnnxRanker,
    check_parity,
    export_onnx,
)

N_FEATURES = 6


def grouped_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests of 5 to 40 candidates; relevance 0..3 from a hidden linear score plus noise."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(5, 41, size=60)
    n = int(groups.sum())
    features = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    features[:, 5] = rng.integers(0, 50, size=n)  # a count-like column, as the real features have
    hidden = features @ np.array([1.0, -0.5, 0.8, 0.0, 0.3, 0.02]) + rng.normal(scale=0.3, size=n)
    labels = np.digitize(hidden, np.quantile(hidden, [0.6, 0.85, 0.95])).astype(np.int32)
    return features, labels, groups


def train(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> lgb.Booster:
    params = {
        "objective": "lambdarank",
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_data_in_leaf": 10,
        "seed": 0,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    data = lgb.Dataset(features.astype(np.float64), label=labels, group=groups)
    return lgb.train(params, data, num_boost_round=60)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[lgb.Booster, OnnxRanker, lgb.Booster, OnnxRanker]:
    directory = tmp_path_factory.mktemp("onnx")
    features, labels, groups = grouped_data(seed=0)
    booster = train(features, labels, groups)
    reversed_booster = train(features, labels.max() - labels, groups)
    paths = directory / "ranker.onnx", directory / "reversed.onnx"
    export_onnx(booster, N_FEATURES, paths[0])
    export_onnx(reversed_booster, N_FEATURES, paths[1])
    return booster, OnnxRanker(paths[0]), reversed_booster, OnnxRanker(paths[1])


def test_onnx_scores_match_lightgbm(exported) -> None:
    booster, onnx, _, _ = exported
    features, _, _ = grouped_data(seed=1)  # held-out rows
    native = booster.predict(features.astype(np.float64), num_threads=1)
    served = onnx.score(features)
    assert served.shape == native.shape
    np.testing.assert_allclose(served, native, atol=1e-4, rtol=0)
    assert np.std(native) > 0.1  # the model is not a constant: agreement means something


def test_onnx_learned_the_ranking(exported) -> None:
    booster, onnx, _, _ = exported
    features, labels, _ = grouped_data(seed=2)
    scores = onnx.score(features)
    assert np.corrcoef(scores, labels)[0, 1] > 0.5


def test_parity_passes_for_a_faithful_export(exported) -> None:
    booster, onnx, _, _ = exported
    features, _, groups = grouped_data(seed=1)
    report = check_parity(booster, onnx, features, groups)
    assert report.passed
    assert report.rows == len(features) and report.requests == len(groups)
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert report.top10_mismatch_share == 0.0
    assert report.to_dict()["passed"] is True
    assert report.to_dict()["max_abs_diff"] == report.max_abs_diff


def test_parity_fails_against_a_different_model(exported) -> None:
    booster, _, _, reversed_onnx = exported
    features, _, groups = grouped_data(seed=1)
    report = check_parity(booster, reversed_onnx, features, groups)
    assert not report.passed
    assert report.max_abs_diff > MAX_ABS_DIFF
    assert report.top10_mismatch_share > MAX_TOP10_MISMATCH_SHARE
    # Only requests with more than 10 candidates can disagree on their top 10 as a set.
    assert report.top10_mismatch_share <= np.mean(groups > 10)
    assert report.to_dict()["passed"] is False


def test_score_on_no_rows_is_empty(exported) -> None:
    _, onnx, _, _ = exported
    scores = onnx.score(np.empty((0, N_FEATURES), dtype=np.float32))
    assert isinstance(scores, np.ndarray) and scores.shape == (0,)


def test_export_writes_a_loadable_file(tmp_path: Path, exported) -> None:
    booster, onnx, _, _ = exported
    path = tmp_path / "again.onnx"
    export_onnx(booster, N_FEATURES, path)
    features, _, _ = grouped_data(seed=3)
    np.testing.assert_array_equal(OnnxRanker(path).score(features), onnx.score(features))
