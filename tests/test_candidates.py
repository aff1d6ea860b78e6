"""Candidate generation: co-visitation counts on hand examples, and the merge of the three sources."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from training.candidates import (
    NO_VECTOR_SCORE,
    CandidateRequest,
    CandidateSettings,
    build_candidates_model,
    generate,
    requests_as_of,
)
from training.covisitation import Covisitation, build_covisitation
from training.features import DAY
from training.ranker_features import PAIR_FEATURES
from training.two_stage import RetrievalModel

ITEMS = [f"i{j}" for j in range(8)]
ROW = {item: j for j, item in enumerate(ITEMS)}


def events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def test_covisitation_counts_pairs_within_the_window_of_one_users_sequence() -> None:
    frame = events([("a", "i0", 1), ("a", "i1", 2), ("a", "i2", 3), ("b", "i0", 1), ("b", "i1", 5),
                    ("c", "i3", 1), ("d", "i2", 9)])  # d's i2 and c's i3 are in different sequences
    covis = build_covisitation(frame, ROW, len(ITEMS), window=1, neighbours=10)
    # i0: co-visited with i1 twice (a, b); i1: with i0 twice and i2 once; i2: with i1 once
    row0 = covis.indices[covis.indptr[0]:covis.indptr[1]]
    assert row0.tolist() == [1]
    row1 = covis.indices[covis.indptr[1]:covis.indptr[2]]
    np.testing.assert_allclose(covis.weights[covis.indptr[1]:covis.indptr[2]], [2 / 3, 1 / 3], rtol=1e-6)
    assert row1.tolist() == [0, 2]
    assert covis.indptr[4] == covis.indptr[3]  # i3 co-visited with nothing
    # window 2 also links a's i0 and i2
    wider = build_covisitation(frame, ROW, len(ITEMS), window=2, neighbours=10)
    assert 2 in wider.indices[wider.indptr[0]:wider.indptr[1]]
    # the scores of seeds: mean of their rows
    scores = covis.scores(np.array([0, 1]))
    assert scores.rows.tolist() == [0, 1, 2]  # only the items the seeds co-visit are held
    np.testing.assert_allclose(scores.at(np.arange(len(ITEMS))), [1 / 3, 1 / 2, 1 / 6, 0, 0, 0, 0, 0], rtol=1e-6)
    assert scores.at(np.array([7, 2, 7])).tolist() == [0, np.float32(1 / 6), 0]  # any order, repeats
    assert covis.scores(np.array([3])).at(np.array([0, 1])).tolist() == [0, 0]  # a seed with no neighbours


def test_covisitation_keeps_the_top_neighbours_and_round_trips(tmp_path) -> None:
    frame = events([("a", "i0", 1), ("a", "i1", 2), ("b", "i0", 1), ("b", "i1", 2), ("c", "i0", 1), ("c", "i2", 2)])
    covis = build_covisitation(frame, ROW, len(ITEMS), window=1, neighbours=1)
    assert covis.indices[covis.indptr[0]:covis.indptr[1]].tolist() == [1]  # i1 (2 co-visits) beats i2 (1)
    covis.save(tmp_path / "c.npz")
    loaded = Covisitation.load(tmp_path / "c.npz")
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(covis, name))


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ITEMS), 4)).astype(np.float32)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    retrieval = RetrievalModel(ITEMS, vectors, ["known"], rng.standard_normal((1, 4)).astype(np.float32), index)
    t = 100 * DAY
    frame = events([("known", "i0", t - 5 * DAY), ("known", "i1", t - 4 * DAY), ("x", "i1", t - 3 * DAY),
                    ("x", "i5", t - 3 * DAY + 1), ("x", "i6", t - 2 * DAY), ("y", "i6", t - DAY), ("y", "i6", t - 1),
                    ("y", "i7", t + DAY)])  # after the instant: not used
    settings = CandidateSettings(n_ann=3, n_covis=2, n_popular=2, covis_window=1, covis_neighbours=5, covis_seeds=2)
    return build_candidates_model(retrieval, frame, t, settings), frame, t


def test_generate_merges_deduplicates_and_excludes_what_the_user_had(model) -> None:
    candidates_model, frame, t = model
    [request] = requests_as_of(frame, ["known"], t)
    assert request.seen == {"i0", "i1"} and request.recent_items == ["i1", "i0"]
    found = generate(candidates_model, [request])
    rows = found.item_rows.tolist()
    assert len(rows) == len(set(rows)) and not {0, 1} & set(rows)
    item_scores = candidates_model.retrieval.item_vectors @ candidates_model.retrieval.user_vectors[0]
    allowed = [r for r in np.argsort(-item_scores) if r not in (0, 1)]
    assert rows[:3] == allowed[:3] and set(found.sources[:3]) == {"ann"}
    # co-visited with i1 (seed): i5 (x's next item); popular in the 30 days: i6 (3 events) then i1 (seen), i5
    assert set(rows) == set(allowed[:3]) | {5, 6}
    source = dict(zip(rows, found.sources, strict=True))
    assert source[5] in ("ann", "covis") and source[6] in ("ann", "popular")
    features = found.pair_features
    assert list(features) == PAIR_FEATURES
    position = rows.index(5)
    assert features["in_covis"][position] == 1.0 and features["covis_score"][position] > 0
    assert features["in_popular"][rows.index(6)] == 1.0
    assert features["popular_count_30d"][rows.index(6)] == 3.0
    np.testing.assert_allclose(features["retrieval_score"], item_scores[rows], rtol=1e-5)


def test_a_user_without_vector_or_history_gets_popular_candidates_only(model) -> None:
    candidates_model, _, _ = model
    found = generate(candidates_model, [CandidateRequest("stranger", set(), [])])
    assert found.item_rows.tolist() == [6, 1] and found.sources.tolist() == ["popular", "popular"]
    assert (found.pair_features["retrieval_score"] == NO_VECTOR_SCORE).all()
    assert (found.pair_features["in_ann"] == 0).all() and (found.pair_features["in_covis"] == 0).all()


def test_unavailable_items_are_never_candidates(model) -> None:
    candidates_model, frame, t = model
    requests = requests_as_of(frame, ["known", "x"], t)
    found = generate(candidates_model, requests, unavailable={2, 3, 4, 5, 6, 7})
    assert set(found.item_rows.tolist()) <= {0, 1}
    assert found.user_ids == ["known", "x"]
