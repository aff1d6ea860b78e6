"""The second stage: a LightGBM LambdaMART ranker over retrieved candidates.

Training examples are built as requests are served: for every user with history before the
ranker's cutoff t0, candidate generation (the serving sources, built from data before t0) proposes
candidates as of t0, each (user, candidate) pair gets the point-in-time features at t0, and the
label says whether the user interacted with the item in the label window [t0, t1).

The user's new items that candidate generation missed are deliberately *not* added as extra positives: they
would carry low retrieval scores with positive labels, a pattern serving never shows the ranker.
On the small simulator that variant lowered two-stage NDCG@10 from 0.097 to 0.081.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from feast import FeatureStore

from training.candidates import CandidatesModel, generate, requests_as_of, unavailable_rows
from training.dataset import Dataset
from training.features import seen_items
from training.two_stage import CandidateSet, candidate_features


@dataclass(frozen=True)
class RankerConfig:
    n_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    # Regularisation for small label windows (the MovieLens benchmark's ~15 users per window);
    # the defaults leave it off.
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    lambda_l2: float = 0.0
    seed: int = 0
    threads: int = 2


@dataclass
class RankerExamples:
    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    candidates: CandidateSet


def build_examples(model: CandidatesModel, store: FeatureStore, dataset: Dataset, t0: int, t1: int) -> RankerExamples:
    """Ranker examples for users active in [t0, t1) who had history before t0; ``model`` as of t0."""
    interactions = dataset.interactions
    before = seen_items(interactions[interactions["ts"] < t0])
    window = interactions[(interactions["ts"] >= t0) & (interactions["ts"] < t1)]
    new_items = {u: items - before.get(u, set()) for u, items in seen_items(window).items()}
    users = sorted(u for u, items in new_items.items() if items and u in before)
    candidates = generate(model, requests_as_of(interactions, users, t0), unavailable_rows(model, dataset, t0))
    item_ids = np.array(model.retrieval.item_ids, dtype=object)[candidates.item_rows]
    labels = np.fromiter((item in new_items[user] for user, item in zip(candidates.pair_users, item_ids, strict=True)),
                         dtype=np.int32, count=len(item_ids))
    features = candidate_features(model.retrieval, store, candidates, t0)
    return RankerExamples(features, labels, candidates.sizes, candidates)


def train_ranker(examples: RankerExamples, feature_names: list[str], config: RankerConfig) -> lgb.Booster:
    if len(examples.labels) == 0 or examples.labels.sum() == 0:
        raise ValueError("no positive ranker examples: the label window holds no new interactions")
    data = lgb.Dataset(
        examples.features.astype(np.float64), label=examples.labels, group=examples.groups,
        feature_name=feature_names, free_raw_data=False,
    )
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction,
        "bagging_freq": 1 if config.bagging_fraction < 1.0 else 0,
        "lambda_l2": config.lambda_l2,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.threads,
        "verbosity": -1,
    }
    return lgb.train(params, data, num_boost_round=config.n_trees)
