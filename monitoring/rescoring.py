"""A bundle's scores on logged requests: what another model would have ranked, for the same moments.

Off-policy evaluation of a *new bundle* needs its ranker's scores on the candidates each logged
request had. The logs hold the candidate ids, the request time and the user's recent items as
served; the stored features come from the point-in-time join at that time (what the online store
served then: the skew check holds the two equal), the user's seen items likewise (plus the recent
ones, as serving adds them), the pair features from the bundle's own candidate sources
(``training/candidates.py``), and the matrix from the same ``ranker_matrix`` serving uses.
Rescoring with the bundle that served reproduces the logged scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from feast import FeatureStore

from feature_repo.definitions import (
    ITEM_ACTIVITY,
    ITEM_ATTRIBUTES,
    TIMESTAMP,
    USER_ACTIVITY,
    USER_HISTORY,
    feature_refs,
)
from feature_repo.store import historical
from serving.event_log import FlatLogs
from serving.model import ServingModel
from training.candidates import CandidateRequest, pair_features, source_rows
from training.ranker_features import PAIR_FEATURES, ranker_matrix


def bundle_scores(logs: FlatLogs, model: ServingModel, store: FeatureStore) -> list[np.ndarray]:
    """Per logged request (in ``logs.requests`` order), ``model``'s ranker scores of its logged candidates."""
    if logs.requests is None:
        raise ValueError("rescoring needs impression logs with candidates (JSON lines), not flat rows")
    requests = logs.requests.reset_index(drop=True)
    users = logs.rows.groupby("request_id", sort=False)["user_id"].first()
    sizes = requests["candidate_ids"].map(len).to_numpy()
    when = pd.to_datetime(requests["ts"], unit="s", utc=True)
    user_rows = historical(store, pd.DataFrame({"user_id": users.reindex(requests["request_id"]).to_numpy(),
                                                TIMESTAMP: when}), feature_refs(USER_ACTIVITY, USER_HISTORY))
    pair_users = user_rows.loc[np.repeat(np.arange(len(requests)), sizes)].reset_index(drop=True)
    pair_items = np.concatenate([np.asarray(ids, dtype=object) for ids in requests["candidate_ids"]]) \
        if sizes.sum() else np.empty(0, dtype=object)
    item_rows = historical(store, pd.DataFrame({"item_id": pair_items, TIMESTAMP: np.repeat(when.to_numpy(), sizes)}),
                           feature_refs(ITEM_ACTIVITY, ITEM_ATTRIBUTES))
    pairs = [_pair_features(model, user, seen, recent, ids) for user, seen, recent, ids in
             zip(user_rows["user_id"], user_rows["u_seen_items"], requests["recent_items"], requests["candidate_ids"],
                 strict=True)]
    pair_columns = {name: np.concatenate([p[name] for p in pairs]) if pairs else np.empty(0, np.float32)
                    for name in PAIR_FEATURES}
    ts = np.repeat(requests["ts"].to_numpy(dtype=np.float64), sizes)
    users_only = pair_users.drop(columns=["u_seen_items"])
    scores = model.ranker.score(ranker_matrix(users_only, item_rows, ts, pair_columns))
    return np.split(scores.astype(np.float64), np.cumsum(sizes)[:-1])


def _pair_features(model: ServingModel, user_id: str, seen: list[str] | None, recent: list[str],
                   item_ids: list[str]) -> dict[str, np.ndarray]:
    """The pair features the bundle's sources give these items for the request (serving's seen = batch + recent)."""
    request = CandidateRequest(user_id, set(seen if seen is not None else []) | set(recent), list(recent))
    [proposed] = source_rows(model.candidates, [request])
    item_row = model.retrieval.item_row
    known = np.array([i in item_row for i in item_ids], dtype=bool)
    rows = np.array([item_row.get(i, 0) for i in item_ids], dtype=np.int64)
    features = pair_features(model.candidates, request, rows, proposed)
    for values in features.values():  # items the bundle does not know: no score, in no source
        values[~known] = 0.0
    return features
