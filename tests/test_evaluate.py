"""Offline metrics on hand examples, and the temporal hold-out they are computed on."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from training.dataset import Dataset
from training.evaluate import holdout_truth, ndcg_at, recall_at, summarize


def gain(rank: int) -> float:
    """Discounted gain of a hit at 1-based ``rank``."""
    return 1.0 / math.log2(rank + 1)


def test_recall_at_k_counts_hits_in_the_top_k_over_all_truth() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    truth = {"b", "d", "x"}
    assert recall_at(ranked, truth, 1) == 0.0
    assert recall_at(ranked, truth, 2) == pytest.approx(1 / 3)
    assert recall_at(ranked, truth, 4) == pytest.approx(2 / 3)
    assert recall_at(ranked, truth, 100) == pytest.approx(2 / 3)  # "x" is never recommended
    assert recall_at([], truth, 10) == 0.0
    assert recall_at(["x", "d", "b"], truth, 3) == 1.0


def test_ndcg_at_k_by_the_formula() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    truth = {"b", "d", "x"}
    # Hits at ranks 2 and 4; a perfect list has its 3 relevant items at ranks 1..3.
    assert ndcg_at(ranked, truth, 3) == pytest.approx(gain(2) / (gain(1) + gain(2) + gain(3)))
    assert ndcg_at(ranked, truth, 5) == pytest.approx((gain(2) + gain(4)) / (gain(1) + gain(2) + gain(3)))
    # With k below |truth| the ideal list is cut at k too, so a perfect top-k scores 1.
    assert ndcg_at(["d", "b", "a"], truth, 2) == pytest.approx(1.0)
    assert ndcg_at(["b", "x", "d"], truth, 10) == pytest.approx(1.0)
    assert ndcg_at(["a", "c"], truth, 10) == 0.0
    # Earlier hits are worth more.
    assert ndcg_at(["b", "a"], {"b"}, 2) > ndcg_at(["a", "b"], {"b"}, 2) > 0


def test_summarize_averages_over_truth_users_and_scores_a_missing_ranking_as_zero() -> None:
    first = [f"i{n}" for n in range(100)]
    rankings = {
        "u1": first,  # hits "i0" (rank 1) and "i50" (rank 51): recall@10 1/2, recall@100 1, ndcg@10 from one hit
        "u2": ["z", "y"],  # hits "y" at rank 2 of 1 relevant
        "other": ["i0"],  # not in the truth: ignored
    }
    truth = {"u1": {"i0", "i50"}, "u2": {"y"}, "u3": {"q"}}  # u3 got no ranking at all
    got = summarize(rankings, truth)
    assert got["users"] == 3
    assert got["recall@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert got["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["ndcg@10"] == pytest.approx((gain(1) / (gain(1) + gain(2)) + gain(2) / gain(1) + 0) / 3)


def test_summarize_without_truth_users() -> None:
    assert summarize({"u1": ["a"]}, {}) == {"users": 0}


def test_holdout_truth_keeps_only_new_items_of_users_with_history() -> None:
    split = 1_000
    events = [
        ("u1", "a", 100),
        ("u1", "b", 999),  # last instant before the split
        ("u1", "a", 1_000),  # already had it: not new
        ("u1", "c", 1_000),  # at the split: counts as after
        ("u1", "d", 2_000),
        ("u2", "a", 500),
        ("u2", "a", 1_500),  # only items already seen: no truth
        ("u3", "e", 1_200),  # no history before the split: not evaluated
        ("u4", "f", 10),  # history but nothing after: not evaluated
    ]
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "ts"]).sort_values("ts", ignore_index=True)
    frame["weight"] = 1.0
    dataset = Dataset(
        interactions=frame,
        users=pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"]}),
        items=pd.DataFrame({"item_id": list("abcdef")}),
    )
    seen, truth = holdout_truth(dataset, split)
    assert seen == {"u1": {"a", "b"}, "u2": {"a"}, "u4": {"f"}}
    assert truth == {"u1": {"c", "d"}}
