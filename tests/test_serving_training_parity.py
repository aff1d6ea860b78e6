"""No training/serving skew by construction: a served request's ranker input equals the training builder's.

The request goes through the real serving objects (online store, item cache, candidate sources from
the bundle, the ONNX ranker); the builder is what makes ranker examples (candidates from the data
before the time, point-in-time features from the offline store). Both at the instant serving starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from conftest import newest_manifest

from feature_repo.store import open_store
from serving.event_log import LogWriter
from serving.model import load_model
from serving.online_features import OnlineFeatures
from serving.recommender import Recommender, StageBudgets
from training.candidates import build_candidates_model, generate, requests_as_of, unavailable_rows
from training.dataset import Dataset
from training.features import next_snapshot
from training.two_stage import candidate_features


class RecordingRanker:
    """The bundle's ranker, keeping each input it scores."""

    def __init__(self, ranker):
        self.ranker = ranker
        self.inputs: list[np.ndarray] = []

    def score(self, features: np.ndarray) -> np.ndarray:
        self.inputs.append(features.copy())
        return self.ranker.score(features)


def test_served_features_equal_the_training_builders_for_the_same_time(copy_of_demo_home, tmp_path):
    home = copy_of_demo_home
    model = load_model(home / "bundles" / newest_manifest(home)["version"])
    dataset = Dataset.load(home / "data")
    store = open_store("embedded", home / "features", "recsys", "redis://127.0.0.1:6379/0")
    now = next_snapshot(dataset.end_ts)  # where the serving clock starts on this data
    ranker = RecordingRanker(model.ranker)
    recommender = Recommender(dataclasses.replace(model, ranker=ranker), OnlineFeatures(store),
                              LogWriter(tmp_path / "impressions.jsonl"), clock=lambda: float(now),
                              budgets=StageBudgets(None, None))
    sources = build_candidates_model(model.retrieval, dataset.interactions, now, model.candidates.settings)

    active = dataset.interactions["user_id"].value_counts()
    towers_know = [u for u in active.index if u in model.retrieval.user_row]
    users = [towers_know[0], towers_know[len(towers_know) // 2], towers_know[-1], "never-seen-before"]
    proposed_by = set()
    for user in users:
        served = recommender.recommend(user, 10)
        assert not served.degraded
        built = generate(sources, requests_as_of(dataset.interactions, [user], now),
                         unavailable_rows(sources, dataset, now))
        matrix = candidate_features(model.retrieval, store, built, now)
        np.testing.assert_array_equal(ranker.inputs[-1], matrix, err_msg=user)
        # and so the same slate, from the same sources
        scores = model.ranker.score(matrix)
        top = np.argsort(-scores, kind="stable")[:10]
        ids = [model.retrieval.item_ids[r] for r in built.item_rows[top]]
        assert [it.item_id for it in served.items] == ids
        assert [it.source for it in served.items] == list(built.sources[top])
        proposed_by |= set(built.sources)
    assert proposed_by == {"ann", "covis", "popular"}
