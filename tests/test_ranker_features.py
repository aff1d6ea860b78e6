"""The ranker's input matrix: named columns in RANKER_FEATURES order, explicit sentinels, no NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.features import DAY
from training.ranker_features import PAIR_FEATURES, RANKER_FEATURES, UNKNOWN, ranker_matrix

NOW = 20_000 * DAY + 3_600


def col(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, RANKER_FEATURES.index(name)]


def pairs(retrieval_score) -> dict[str, np.ndarray]:
    """Pair features with the given two-tower scores and distinct values in the others."""
    score = np.asarray(retrieval_score, dtype=np.float64)
    n = len(score)
    return {"retrieval_score": score, "covis_score": np.linspace(0.0, 0.5, n),
            "popular_count_30d": np.arange(n) * 3.0, "in_ann": np.ones(n), "in_covis": np.arange(n) % 2.0,
            "in_popular": np.zeros(n)}


def full_rows() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Three candidate pairs with every stored feature present and distinct values per column."""
    users = pd.DataFrame(
        {
            "u_events_1d": [1, 2, 3],
            "u_events_7d": [11, 12, 13],
            "u_events_30d": [21, 22, 23],
            "u_events_total": [31, 32, 33],
            "u_last_event_ts": [NOW - DAY, NOW - 3 * DAY // 2, NOW - 10 * DAY],
            "u_category_share": [[0.5, 0.25, 0.25], [0.0, 0.1, 0.9], [1.0, 0.0, 0.0]],
        }
    )
    items = pd.DataFrame(
        {
            "i_events_1d": [41, 42, 43],
            "i_events_7d": [14, 0, 6],
            "i_events_30d": [61, 62, 63],
            "i_events_total": [71, 72, 73],
            "i_impressions_7d": [28, 0, 60],
            "i_release_ts": [NOW - 2 * DAY, NOW - DAY // 4, NOW - 100 * DAY],
            "i_price": [9.5, 19.5, 29.5],
            "i_category_idx": [1, 2, 0],
        }
    )
    return users, items, pairs([0.9, 0.8, 0.7])


def test_columns_follow_ranker_features_order_and_dtype() -> None:
    users, items, scores = full_rows()
    m = ranker_matrix(users, items, NOW, scores)
    assert m.dtype == np.float32
    assert m.shape == (3, len(RANKER_FEATURES))
    assert len(set(RANKER_FEATURES)) == len(RANKER_FEATURES)
    # Stored values pass through unchanged, each into its own named column.
    for name in ("u_events_1d", "u_events_7d", "u_events_30d", "u_events_total"):
        np.testing.assert_array_equal(col(m, name), users[name].to_numpy(np.float32))
    for name in ("i_events_1d", "i_events_7d", "i_events_30d", "i_events_total", "i_impressions_7d", "i_price"):
        np.testing.assert_array_equal(col(m, name), items[name].to_numpy(np.float32))
    for name in PAIR_FEATURES:
        np.testing.assert_array_equal(col(m, name), scores[name].astype(np.float32))


def test_times_are_measured_from_the_given_ts() -> None:
    users, items, scores = full_rows()
    m = ranker_matrix(users, items, NOW, scores)
    np.testing.assert_allclose(col(m, "u_days_since_last_event"), [1.0, 1.5, 10.0], rtol=1e-6)
    np.testing.assert_allclose(col(m, "i_age_days"), [2.0, 0.25, 100.0], rtol=1e-6)
    # A later request time ages everything by the same amount; per-row times are honoured too.
    later = ranker_matrix(users, items, NOW + 2 * DAY, scores)
    np.testing.assert_allclose(col(later, "u_days_since_last_event"), [3.0, 3.5, 12.0], rtol=1e-6)
    per_row = ranker_matrix(users, items, np.array([NOW, NOW + DAY, NOW + 2 * DAY]), scores)
    np.testing.assert_allclose(col(per_row, "i_age_days"), [2.0, 1.25, 102.0], rtol=1e-6)


def test_ctr_and_category_share() -> None:
    users, items, scores = full_rows()
    m = ranker_matrix(users, items, NOW, scores)
    # Clicks over impressions in the last 7 days; unknown (-1) when the item was not shown.
    np.testing.assert_allclose(col(m, "i_ctr_7d"), [14 / 28, UNKNOWN, 6 / 60], rtol=1e-6)
    # The user's share of the item's category: share[i_category_idx].
    np.testing.assert_allclose(col(m, "ui_category_share"), [0.25, 0.9, 1.0], rtol=1e-6)


def test_trend_rises_with_recent_activity_and_is_finite_without_history() -> None:
    n = 4
    users = pd.DataFrame({"u_events_total": np.zeros(n)})
    items = pd.DataFrame({"i_events_7d": [0, 3, 6, 0], "i_events_30d": [10, 10, 10, 0]})
    trend = col(ranker_matrix(users, items, NOW, pairs(np.zeros(n))), "i_trend_7d_vs_30d")
    assert np.isfinite(trend).all()
    assert trend[0] < trend[1] < trend[2]
    assert trend[3] == 0.0


def test_missing_values_become_sentinels_not_nan() -> None:
    """What a point-in-time join returns for an entity with no row yet: nulls everywhere."""
    users = pd.DataFrame(
        {
            "u_events_1d": [None, 1],
            "u_events_7d": [None, 1],
            "u_events_30d": [None, 1],
            "u_events_total": [None, 1],
            "u_last_event_ts": [None, 0],
            "u_category_share": [None, [0.3, 0.7]],
        },
        dtype=object,
    )
    items = pd.DataFrame(
        {
            "i_events_1d": [None, np.nan],
            "i_events_7d": [None, np.nan],
            "i_events_30d": [None, np.nan],
            "i_events_total": [None, np.nan],
            "i_impressions_7d": [None, np.nan],
            "i_release_ts": [None, np.nan],
            "i_price": [None, np.nan],
            "i_category_idx": [None, 5],  # out of the user's share vector
        },
        dtype=object,
    )
    m = ranker_matrix(users, items, NOW, pairs([0.1, 0.2]))
    assert not np.isnan(m).any()
    for name in ("u_events_1d", "u_events_7d", "u_events_30d", "u_events_total"):
        np.testing.assert_array_equal(col(m, name), [0.0, 1.0], err_msg=name)
    for name in ("i_events_1d", "i_events_7d", "i_events_30d", "i_events_total", "i_impressions_7d"):
        np.testing.assert_array_equal(col(m, name), [0.0, 0.0], err_msg=name)
    for name in ("u_days_since_last_event", "i_age_days", "i_price", "i_ctr_7d"):
        np.testing.assert_array_equal(col(m, name), [UNKNOWN, UNKNOWN], err_msg=name)
    assert UNKNOWN == -1.0
    np.testing.assert_array_equal(col(m, "ui_category_share"), [0.0, 0.0])


def test_missing_columns_get_the_same_defaults() -> None:
    """Serving on a store without some view (no impressions, no item attributes) still works."""
    users = pd.DataFrame(index=range(2))
    items = pd.DataFrame(index=range(2))
    m = ranker_matrix(users, items, NOW, pairs([0.5, 0.25]))
    assert not np.isnan(m).any()
    unknown = {"u_days_since_last_event", "i_age_days", "i_price", "i_ctr_7d"}
    for name in RANKER_FEATURES[: -len(PAIR_FEATURES)]:
        expected = UNKNOWN if name in unknown else 0.0
        np.testing.assert_array_equal(col(m, name), [expected, expected], err_msg=name)
    assert RANKER_FEATURES[-len(PAIR_FEATURES):] == PAIR_FEATURES
    np.testing.assert_array_equal(col(m, "retrieval_score"), [0.5, 0.25])


def test_pair_features_are_required() -> None:
    users, items, scores = full_rows()
    del scores["covis_score"]
    with pytest.raises(ValueError, match="covis_score"):
        ranker_matrix(users, items, NOW, scores)


def test_events_per_day_of_age() -> None:
    users, items, scores = full_rows()
    m = ranker_matrix(users, items, NOW, scores)
    # 71 events over 2 days, 72 over a quarter day (counted as one), 73 over 100 days
    np.testing.assert_allclose(col(m, "i_events_per_day"), [35.5, 72.0, 0.73], rtol=1e-6)


@pytest.mark.parametrize(("n_users", "n_items", "n_scores"), [(2, 3, 3), (3, 2, 3), (3, 3, 2)])
def test_misaligned_inputs_raise(n_users: int, n_items: int, n_scores: int) -> None:
    users, items, scores = full_rows()
    with pytest.raises(ValueError, match="row-aligned"):
        ranker_matrix(users.iloc[:n_users], items.iloc[:n_items], NOW, {k: v[:n_scores] for k, v in scores.items()})


def test_empty_input_gives_an_empty_matrix() -> None:
    users, items, _ = full_rows()
    m = ranker_matrix(users.iloc[:0], items.iloc[:0], NOW, pairs([]))
    assert m.shape == (0, len(RANKER_FEATURES))


def test_a_user_without_a_share_vector_as_serving_passes_it() -> None:
    """Serving broadcasts a missing user value as a NaN column: no share, not an error."""
    _, items, scores = full_rows()
    users = {"u_category_share": np.full(3, np.nan), "u_events_total": np.full(3, np.nan)}
    m = ranker_matrix(users, items, NOW, scores)
    np.testing.assert_array_equal(col(m, "ui_category_share"), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(col(m, "u_events_total"), [0.0, 0.0, 0.0])
