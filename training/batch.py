"""`recsys recommend-batch`: top-K for many users as of a past instant, from a bundle.

Only data before ``as_of`` is used: features come from the point-in-time join at ``as_of``, the
seen-item exclusion and the popularity fill from interactions before it. The bundle's models must
themselves predate ``as_of`` (its training cutoff), or its embeddings would carry the future;
such a request is refused rather than answered with leaked information.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from feast import FeatureStore

from training.candidates import CandidatesModel, generate, requests_as_of, unavailable_rows
from training.dataset import Dataset
from training.features import seen_items
from training.two_stage import candidate_features, popularity_ranking, rank, recent_popularity


def recommend_batch(
    dataset: Dataset, model: CandidatesModel, score: Callable[[np.ndarray], np.ndarray], store: FeatureStore,
    training_cutoff_ts: int, user_ids: list[str], as_of: int, k: int,
) -> pd.DataFrame:
    """``user_id, item_id, rank, score`` rows; short lists filled by popularity.

    ``model``: the candidate sources as of ``as_of`` (``build_candidates_model`` on the dataset), so
    co-visitation and popularity too come from data before it.
    """
    if as_of < training_cutoff_ts:
        raise ValueError(
            f"--as-of {as_of} is before the bundle's training cutoff {training_cutoff_ts}: its models saw "
            "later data; train a bundle on data before that time first"
        )
    interactions = dataset.interactions
    seen = seen_items(interactions[interactions["ts"] < as_of])
    candidates = generate(model, requests_as_of(interactions, user_ids, as_of), unavailable_rows(model, dataset, as_of))
    ranked = rank(candidates, score(candidate_features(model.retrieval, store, candidates, as_of)), k)
    fill = popularity_ranking(recent_popularity(interactions, as_of), user_ids, seen, k)
    rows = []
    for user in user_ids:
        picks = [(model.retrieval.item_ids[r], s) for r, s in ranked.get(user, [])]
        taken = {item for item, _ in picks}
        picks += [(item, float(c)) for item, c in fill[user] if item not in taken][: k - len(picks)]
        rows += [(user, item, position, s) for position, (item, s) in enumerate(picks, start=1)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])
