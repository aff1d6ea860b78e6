"""A bundle's scores on logged requests: what another model would have ranked, for the same moments.

Off-policy evaluation of a *new bundle* needs its ranker's scores on the candidates each logged
request had. The logs hold the candidate ids and the request time; the features come from the
point-in-time join at that time (what the online store served then: the skew check holds the two
equal), the retrieval score from the bundle's own vectors, and the matrix from the same
``ranker_matrix`` serving uses. Rescoring with the bundle that served reproduces the logged scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from feast import FeatureStore

from feature_repo.definitions import ITEM_ACTIVITY, ITEM_ATTRIBUTES, TIMESTAMP, USER_ACTIVITY, feature_refs
from feature_repo.store import historical
from serving.event_log import FlatLogs
from serving.model import ServingModel
from training.ranker_features import ranker_matrix
from training.retrieval import pair_scores


def bundle_scores(logs: FlatLogs, model: ServingModel, store: FeatureStore) -> list[np.ndarray]:
    """Per logged request (in ``logs.requests`` order), ``model``'s ranker scores of its logged candidates."""
    if logs.requests is None:
        raise ValueError("rescoring needs impression logs with candidates (JSON lines), not flat rows")
    requests = logs.requests.reset_index(drop=True)
    users = logs.rows.groupby("request_id", sort=False)["user_id"].first()
    sizes = requests["candidate_ids"].map(len).to_numpy()
    when = pd.to_datetime(requests["ts"], unit="s", utc=True)
    user_rows = historical(store, pd.DataFrame({"user_id": users.reindex(requests["request_id"]).to_numpy(),
                                                TIMESTAMP: when}), feature_refs(USER_ACTIVITY))
    pair_users = user_rows.loc[np.repeat(np.arange(len(requests)), sizes)].reset_index(drop=True)
    pair_items = np.concatenate([np.asarray(ids, dtype=object) for ids in requests["candidate_ids"]]) \
        if sizes.sum() else np.empty(0, dtype=object)
    item_rows = historical(store, pd.DataFrame({"item_id": pair_items, TIMESTAMP: np.repeat(when.to_numpy(), sizes)}),
                           feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES))
    retrieval = model.retrieval
    user_vectors = np.stack([retrieval.user_vectors[retrieval.user_row[u]] if u in retrieval.user_row
                             else np.zeros(retrieval.user_vectors.shape[1], np.float32)
                             for u in pair_users["user_id"]]) if len(pair_users) else np.zeros((0, 1), np.float32)
    item_vectors = np.stack([retrieval.item_vectors[retrieval.item_row[i]] if i in retrieval.item_row
                             else np.zeros(retrieval.item_vectors.shape[1], np.float32)
                             for i in pair_items]) if len(pair_items) else np.zeros((0, 1), np.float32)
    retrieval_scores = pair_scores(user_vectors, item_vectors)
    ts = np.repeat(requests["ts"].to_numpy(dtype=np.float64), sizes)
    scores = model.ranker.score(ranker_matrix(pair_users, item_rows, ts, retrieval_scores))
    return np.split(scores.astype(np.float64), np.cumsum(sizes)[:-1])
