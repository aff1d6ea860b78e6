"""Candidate search with exclusions, and the index chosen by catalog size, against exact brute force."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from training.retrieval import pair_scores, search_excluding
from training.retrieval_index import EXACT_MAX_ITEMS, IVF_NPROBE, build_index, configure_for_search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_top(queries: np.ndarray, vectors: np.ndarray, exclude: list[set[int]], n: int) -> list[np.ndarray]:
    """Rows of the ``n`` highest inner products per query, excluded rows removed, best first."""
    out = []
    for q, banned in zip(queries, exclude, strict=True):
        scores = vectors.astype(np.float64) @ q.astype(np.float64)
        order = [r for r in np.argsort(-scores, kind="stable") if r not in banned]
        out.append(np.array(order[:n], dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def small_catalog():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(50, 8)))
    queries = unit(rng.normal(size=(6, 8)))
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    return vectors, queries, index


def random_exclusions(rng: np.random.Generator, n_queries: int, n_items: int) -> list[set[int]]:
    sizes = [0, 1, 5, 12, 30, 3][:n_queries]
    return [set(rng.choice(n_items, size=s, replace=False).tolist()) for s in sizes]


def test_search_excluding_returns_the_best_allowed_items(small_catalog) -> None:
    vectors, queries, index = small_catalog
    exclude = random_exclusions(np.random.default_rng(1), len(queries), len(vectors))
    # Make sure excluded rows would otherwise be at the top.
    exclude[1] = {int(np.argmax(vectors @ queries[1]))}
    results = search_excluding(index, queries, exclude, n=10)
    expected = brute_top(queries, vectors, exclude, 10)
    assert len(results) == len(queries)
    for (rows, scores), banned, want, q in zip(results, exclude, expected, queries, strict=True):
        assert len(rows) == 10
        assert not set(rows.tolist()) & banned
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_allclose(scores, vectors[rows] @ q, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(scores) <= 0)


def test_search_excluding_returns_every_allowed_item_when_fewer_than_n(small_catalog) -> None:
    vectors, queries, index = small_catalog
    exclude = [set(range(0, 50, 2)), set(), set(range(45))]  # 25, 50 and 5 allowed items
    results = search_excluding(index, queries[:3], exclude, n=40)
    sizes = [len(rows) for rows, _ in results]
    assert sizes == [25, 40, 5]
    for (rows, scores), banned in zip(results, exclude, strict=True):
        allowed = set(range(50)) - banned
        assert set(rows.tolist()) <= allowed
        assert len(set(rows.tolist())) == len(rows)
        if len(allowed) <= 40:
            assert set(rows.tolist()) == allowed
        assert np.all(np.diff(scores) <= 0)


def test_search_excluding_everything_excluded_or_no_queries(small_catalog) -> None:
    vectors, queries, index = small_catalog
    [(rows, scores)] = search_excluding(index, queries[:1], [set(range(50))], n=10)
    assert len(rows) == 0 and len(scores) == 0
    assert search_excluding(index, queries[:0], [], n=10) == []
    empty = faiss.IndexFlatIP(8)
    [(rows, _)] = search_excluding(empty, queries[:1], [set()], n=10)
    assert len(rows) == 0


def test_flat_index_up_to_exact_max_items_gives_exact_results() -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng.normal(size=(EXACT_MAX_ITEMS, 16)))
    index, params = build_index(vectors)
    assert params == {"type": "flat_ip", "n": EXACT_MAX_ITEMS, "dim": 16}
    assert index.ntotal == EXACT_MAX_ITEMS
    queries = unit(rng.normal(size=(5, 16)))
    _, rows = index.search(queries, 20)
    for q, got in zip(queries, rows, strict=True):
        np.testing.assert_array_equal(got, np.argsort(-(vectors @ q), kind="stable")[:20])


def clustered(rng: np.random.Generator, n: int, dim: int, n_clusters: int) -> np.ndarray:
    centers = unit(rng.normal(size=(n_clusters, dim)))
    members = rng.integers(n_clusters, size=n)
    return unit(centers[members] + rng.normal(scale=0.1, size=(n, dim)))


@pytest.fixture(scope="module")
def ivf_catalog():
    rng = np.random.default_rng(3)
    n, dim = 25_000, 16
    vectors = clustered(rng, n, dim, n_clusters=64)
    queries = clustered(rng, 200, dim, n_clusters=64)
    index, params = build_index(vectors, seed=0)
    return vectors, queries, index, params


def test_ivf_above_exact_max_items(ivf_catalog) -> None:
    vectors, _, index, params = ivf_catalog
    n = len(vectors)
    assert n > EXACT_MAX_ITEMS
    assert params == {"type": "ivf_flat_ip", "n": n, "dim": 16, "nlist": int(4 * math.sqrt(n)), "nprobe": IVF_NPROBE}
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nlist == params["nlist"] and ivf.ntotal == n and ivf.metric_type == faiss.METRIC_INNER_PRODUCT


def test_round_tripped_ivf_reaches_recall_at_100(ivf_catalog) -> None:
    vectors, queries, index, params = ivf_catalog
    truth = np.argsort(-(vectors @ queries.T), axis=0, kind="stable")[:100].T  # exact top 100 per query

    def recall(idx: faiss.Index) -> float:
        results = search_excluding(idx, queries, [set()] * len(queries), n=100)
        return float(np.mean([len(set(rows.tolist()) & set(t.tolist())) / 100
                              for (rows, _), t in zip(results, truth, strict=True)]))

    restored = faiss.deserialize_index(faiss.serialize_index(index))
    faiss.extract_index_ivf(restored).nprobe = 1  # whatever the file says, the manifest's parameters win
    assert recall(restored) < 0.5  # one probed cell is not enough: the search parameters matter
    configure_for_search(restored, params)
    assert faiss.extract_index_ivf(restored).nprobe == IVF_NPROBE
    assert recall(restored) >= 0.9
    # Exclusions still hold on the approximate index.
    exclude = [set(t[:10].tolist()) for t in truth]
    for (rows, _), banned in zip(search_excluding(restored, queries, exclude, n=100), exclude, strict=True):
        assert not set(rows.tolist()) & banned


def test_configure_for_search_leaves_a_flat_index_alone() -> None:
    index, params = build_index(unit(np.random.default_rng(4).normal(size=(10, 4))))
    configure_for_search(index, params)  # no IVF inside: must not raise
    assert index.ntotal == 10


def test_pair_scores_have_the_same_bits_however_pairs_are_batched():
    """The ranker compares this score with tree thresholds: one ulp of difference between training,
    serving and rescoring could flip a split, so the score must not depend on batching or order."""
    rng = np.random.default_rng(7)
    users = rng.normal(size=(50, 64)).astype(np.float32)
    items = rng.normal(size=(50, 64)).astype(np.float32)
    batched = pair_scores(users, items)
    one_by_one = np.concatenate([pair_scores(users[i:i + 1], items[i:i + 1]) for i in range(50)])
    reversed_dims = pair_scores(users[:, ::-1], items[:, ::-1])
    assert batched.dtype == np.float32
    assert batched.tobytes() == one_by_one.tobytes() == reversed_dims.tobytes()
    exact = (users.astype(np.float64) * items.astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(batched, exact, rtol=1e-6)
