"""The second stage: a LightGBM LambdaMART ranker over retrieved candidates.

Training examples are built as requests are served: for every user with history before the
ranker's cutoff t0, the two-tower retrieval proposes candidates as of t0, each (user, candidate)
pair gets the point-in-time features at t0, and the label says whether the user interacted with
the item in the label window [t0, t1).

The user's new items that retrieval missed are deliberately *not* added as extra positives: they
would carry low retrieval scores with positive labels, a pattern serving never shows the ranker.
On the small simulator that variant lowered two-stage NDCG@10 from 0.097 to 0.081.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from feast import FeatureStore

from training.dataset import Dataset
from training.features import seen_items, unavailable_items
from training.two_stage import CandidateSet, RetrievalModel, candidate_features, retrieve


@dataclass(frozen=True)
class RankerConfig:
    n_trees: int = 200
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    seed: int = 0
    threads: int = 2


@dataclass
class RankerExamples:
    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    candidates: CandidateSet


def build_examples(model: RetrievalModel, store: FeatureStore, dataset: Dataset, t0: int, t1: int,
                   n_candidates: int) -> RankerExamples:
    """Ranker examples for users active in [t0, t1) who had history before t0."""
    before = seen_items(dataset.interactions[dataset.interactions["ts"] < t0])
    window = dataset.interactions[(dataset.interactions["ts"] >= t0) & (dataset.interactions["ts"] < t1)]
    new_items = {u: items - before.get(u, set()) for u, items in seen_items(window).items()}
    users = sorted(u for u, items in new_items.items() if items and u in before)
    candidates = retrieve(model, users, before, n_candidates, unavailable_items(dataset, t0))
    labels = np.concatenate([
        np.isin(np.array(model.item_ids, dtype=object)[candidates.item_rows[start:start + size]],
                list(new_items[user])).astype(np.int32)
        for user, start, size in zip(candidates.user_ids, np.cumsum(candidates.sizes) - candidates.sizes,
                                     candidates.sizes, strict=True)
    ]) if users else np.empty(0, np.int32)
    return RankerExamples(candidate_features(model, store, candidates, t0), labels, candidates.sizes, candidates)


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
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.threads,
        "verbosity": -1,
    }
    return lgb.train(params, data, num_boost_round=config.n_trees)
