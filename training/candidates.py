"""Candidate generation: three sources merged per request, with the pair features the ranker reads.

- ``ann``: the two-tower user vector's nearest items in the FAISS index (users the towers know);
- ``covis``: items co-visited with the user's most recent items (anyone with recent events);
- ``popular``: the most interacted-with items of the last 30 days (everyone, cold start included).

Each source drops what the user already had and what is not in the catalog yet; the merge keeps
the first source that proposed an item (in the order above). Every candidate gets the same pair
features whatever its source: its two-tower score, co-visitation score, recent popularity and one
indicator per source, so the ranker can learn how far to trust each.

The training-set builder, offline evaluation, batch recommendation and serving all call
:func:`generate`, so a candidate and its pair features are produced one way everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from training.covisitation import Covisitation, SeedScores, build_covisitation
from training.dataset import Dataset
from training.features import realtime_states, seen_items, unavailable_items
from training.ranker_features import PAIR_FEATURES
from training.retrieval import in_sorted, pair_scores, search_excluding
from training.two_stage import CandidateSet, RetrievalModel, recent_popularity

SOURCE_ANN = "ann"
SOURCE_COVIS = "covis"
SOURCE_POPULAR = "popular"
SOURCES = (SOURCE_ANN, SOURCE_COVIS, SOURCE_POPULAR)
# The two-tower score of a user the towers never saw: below every cosine.
NO_VECTOR_SCORE = -2.0


@dataclass(frozen=True)
class CandidateSettings:
    """How many candidates each source proposes, and how co-visitation is built (recorded in the manifest)."""

    n_ann: int = 200
    n_covis: int = 100
    n_popular: int = 50
    covis_window: int = 10  # events apart in a user's sequence that still count as co-visited
    covis_neighbours: int = 100  # neighbours kept per item
    covis_seeds: int = 20  # most recent items of the user that seed co-visitation

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CandidateRequest:
    user_id: str
    seen: set[str]
    recent_items: list[str] = field(default_factory=list)  # most recent first (``rt_recent_items``)


@dataclass
class CandidatesModel:
    """Everything the sources need, as known at one instant."""

    retrieval: RetrievalModel
    covisitation: Covisitation
    popular_rows: np.ndarray  # item rows, most popular first
    popular_counts: np.ndarray  # their interaction counts in the window
    settings: CandidateSettings

    def __post_init__(self) -> None:
        self.popularity = np.zeros(len(self.retrieval.item_ids), dtype=np.float32)
        self.popularity[self.popular_rows] = self.popular_counts


def build_candidates_model(retrieval: RetrievalModel, interactions: pd.DataFrame, as_of: int,
                           settings: CandidateSettings) -> CandidatesModel:
    """Co-visitation and recent popularity from the interactions strictly before ``as_of``."""
    before = interactions[interactions["ts"] < as_of]
    covisitation = build_covisitation(before, retrieval.item_row, len(retrieval.item_ids), settings.covis_window,
                                      settings.covis_neighbours)
    popular = recent_popularity(before, as_of)
    return model_from_parts(retrieval, covisitation, list(popular.index), popular.to_numpy(dtype=np.float32), settings)


def model_from_parts(retrieval: RetrievalModel, covisitation: Covisitation, popular_items: list[str],
                  popular_counts: np.ndarray, settings: CandidateSettings) -> CandidatesModel:
    """A model from stored parts (bundle files); popular items the retrieval model lacks are dropped."""
    known = [i for i, item in enumerate(popular_items) if item in retrieval.item_row]
    rows = np.array([retrieval.item_row[popular_items[i]] for i in known], dtype=np.int64)
    counts = np.asarray(popular_counts, dtype=np.float32)[known]
    return CandidatesModel(retrieval, covisitation, rows, counts, settings)


def requests_as_of(interactions: pd.DataFrame, user_ids: list[str], ts: int) -> list[CandidateRequest]:
    """The requests of ``user_ids`` at ``ts`` as serving would see them: what each had before ``ts``, and
    their recent items exactly as the real-time feature view holds them."""
    before = interactions[interactions["ts"] < ts]
    seen = seen_items(before)
    states = realtime_states(before[before["user_id"].isin(set(user_ids))])
    return [CandidateRequest(u, seen.get(u, set()), states[u]["rt_recent_items"] if u in states else [])
            for u in user_ids]


def unavailable_rows(model: CandidatesModel, dataset: Dataset, ts: int) -> set[int]:
    """Rows of the items not in the catalog yet at ``ts``."""
    item_row = model.retrieval.item_row
    return {item_row[i] for i in unavailable_items(dataset, ts) if i in item_row}


def retrieval_only_scores(candidates: CandidateSet) -> np.ndarray:
    """The "retrieval only" ranking: ANN candidates by two-tower score, the others left out (-inf)."""
    in_ann = candidates.pair_features["in_ann"] > 0
    return np.where(in_ann, candidates.pair_features["retrieval_score"], -np.inf)


def two_tower_scores(retrieval: RetrievalModel, user_id: str, rows: np.ndarray) -> np.ndarray:
    """Inner product of the user's and each item's vector (float32, the same on every path)."""
    user_row = retrieval.user_row.get(user_id)
    if user_row is None:
        return np.full(len(rows), NO_VECTOR_SCORE, dtype=np.float32)
    return pair_scores(retrieval.user_vectors[user_row], retrieval.item_vectors[rows])


def _excluded_rows(model: CandidatesModel, request: CandidateRequest, unavailable: set[int]) -> np.ndarray:
    """The rows no source may propose to this request (seen or not yet available), sorted."""
    item_row = model.retrieval.item_row
    seen = [item_row[i] for i in request.seen if i in item_row]
    return np.unique(np.fromiter(itertools.chain(unavailable, seen), dtype=np.int64))


def _seed_rows(model: CandidatesModel, request: CandidateRequest) -> np.ndarray:
    item_row = model.retrieval.item_row
    seeds = [item_row[i] for i in request.recent_items[: model.settings.covis_seeds] if i in item_row]
    return np.array(seeds, dtype=np.int64)


def _top_allowed(scores: SeedScores, blocked: np.ndarray, n: int) -> np.ndarray:
    """Rows of the ``n`` highest positive scores not ``blocked`` (a mask over item rows), best first
    (ties by row)."""
    keep = (scores.values > 0) & ~blocked[scores.rows]
    rows, values = scores.rows[keep], scores.values[keep]
    return rows[np.lexsort((rows, -values))][:n]


def pair_features(model: CandidatesModel, request: CandidateRequest, rows: np.ndarray,
                  members: dict[str, np.ndarray], covis: SeedScores | None = None) -> dict[str, np.ndarray]:
    """The pair features of ``rows`` for one request; ``members``: the rows each source proposed;
    ``covis``: the request's co-visitation scores when the caller has them already."""
    if covis is None:
        covis = model.covisitation.scores(_seed_rows(model, request))
    return {
        "retrieval_score": two_tower_scores(model.retrieval, request.user_id, rows),
        "covis_score": covis.at(rows),
        "popular_count_30d": model.popularity[rows],
        **{f"in_{source}": in_sorted(rows, np.sort(members[source])).astype(np.float32) for source in SOURCES},
    }


def _proposals(model: CandidatesModel, requests: list[CandidateRequest],
               unavailable: set[int]) -> Iterator[tuple[dict[str, np.ndarray], SeedScores]]:
    """Per request, the rows each source proposes (best first) and its co-visitation scores."""
    settings, retrieval = model.settings, model.retrieval
    excluded = [_excluded_rows(model, r, unavailable) for r in requests]
    known = [i for i, r in enumerate(requests) if r.user_id in retrieval.user_row]
    ann = {i: np.empty(0, np.int64) for i in range(len(requests))}
    if known and settings.n_ann > 0:
        queries = retrieval.user_vectors[[retrieval.user_row[requests[i].user_id] for i in known]]
        for i, (rows, _) in zip(known, search_excluding(retrieval.index, queries, [excluded[i] for i in known],
                                                        settings.n_ann), strict=True):
            ann[i] = rows
    blocked = np.zeros(len(retrieval.item_ids), dtype=bool)
    for i, request in enumerate(requests):
        blocked[excluded[i]] = True
        covis = model.covisitation.scores(_seed_rows(model, request))
        # excluded rows can take at most len(excluded) places of the first n_popular + len(excluded)
        popular = model.popular_rows[: settings.n_popular + len(excluded[i])]
        proposed = {SOURCE_ANN: ann[i], SOURCE_COVIS: _top_allowed(covis, blocked, settings.n_covis),
                    SOURCE_POPULAR: popular[~blocked[popular]][: settings.n_popular]}
        blocked[excluded[i]] = False
        yield proposed, covis


def source_rows(model: CandidatesModel, requests: list[CandidateRequest],
                unavailable: set[int] = frozenset()) -> list[dict[str, np.ndarray]]:
    """Per request, the rows each source proposes, best first."""
    return [proposed for proposed, _ in _proposals(model, requests, unavailable)]


def generate(model: CandidatesModel, requests: list[CandidateRequest],
             unavailable: set[int] = frozenset()) -> CandidateSet:
    """Merged, deduplicated candidates of every request with their sources and pair features.

    ``unavailable``: item rows not in the catalog at the request time (offline paths; serving is now).
    """
    sizes, rows_out, sources_out, features_out = [], [], [], []
    for request, (proposed, covis) in zip(requests, _proposals(model, requests, unavailable), strict=True):
        proposals = np.concatenate([proposed[s] for s in SOURCES]).astype(np.int64)
        proposer = np.repeat(np.arange(len(SOURCES)), [len(proposed[s]) for s in SOURCES])
        first = np.sort(np.unique(proposals, return_index=True)[1])  # the earliest source that proposed a row wins
        merged = proposals[first]
        sizes.append(len(merged))
        rows_out.append(merged)
        sources_out.append(np.asarray(SOURCES, dtype=object)[proposer[first]])
        features_out.append(pair_features(model, request, merged, proposed, covis))
    return CandidateSet(
        user_ids=[r.user_id for r in requests],
        sizes=np.array(sizes, dtype=np.int64),
        item_rows=np.concatenate(rows_out) if rows_out else np.empty(0, np.int64),
        sources=np.concatenate(sources_out) if sources_out else np.empty(0, object),
        pair_features={n: np.concatenate([f[n] for f in features_out]) if features_out else np.empty(0, np.float32)
                       for n in PAIR_FEATURES},
    )
