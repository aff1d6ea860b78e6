"""`recsys train`: data → two-tower → FAISS → ranker → ONNX (parity-gated) → evaluation → bundle.

Time is split in three, at UTC day boundaries:

    start ──── two-tower training ──── t0 ── ranker labels ── split ── evaluation ── end
                                        │                        │
                       ranker features as of t0       all models are evaluated as of split

The two-tower model sees interactions before t0 only, so the retrieval score the ranker learns
from is as uninformed about the label window as it will be about the future when serving.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from feast import FeatureStore

from training import bundle
from training.candidates import (
    CandidateSettings,
    CandidatesModel,
    build_candidates_model,
    generate,
    requests_as_of,
    unavailable_rows,
)
from training.dataset import Dataset
from training.evaluate import EvaluationReport, evaluate
from training.features import DAY, category_vocabulary, next_snapshot
from training.offline_features import features_as_of
from training.ranker import RankerConfig, build_examples, train_ranker
from training.ranker_features import RANKER_FEATURES
from training.ranker_onnx import OnnxRanker, ParityError, ParityReport, check_parity, export_onnx
from training.retrieval_index import build_index
from training.two_stage import RetrievalModel, candidate_features
from training.two_tower import TowerInputs, TwoTowerConfig, train_two_tower

# Users whose requests make the drift reference (all of them in the small world).
REFERENCE_USERS = 2000


@dataclass(frozen=True)
class TrainConfig:
    eval_fraction: float = 0.1
    ranker_fraction: float = 0.1
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)


@dataclass(frozen=True)
class TrainResult:
    path: Path
    manifest: bundle.Manifest
    evaluation: EvaluationReport
    parity: ParityReport


def split_times(dataset: Dataset, config: TrainConfig) -> tuple[int, int]:
    """(t0, split): day-aligned cut points, each window at least one day long."""
    start, end = dataset.start_ts, dataset.end_ts + 1
    span = end - start
    split = max(start + 2 * DAY, (end - int(config.eval_fraction * span)) // DAY * DAY)
    t0 = max(start + DAY, (split - int(config.ranker_fraction * span)) // DAY * DAY)
    if not start < t0 < split < end:
        raise ValueError(f"data spans {span / DAY:.1f} days: too short to split into train/label/test windows")
    return t0, split


def tower_inputs(store: FeatureStore, user_ids: list[str], item_ids: list[str], ts: int,
                 n_categories: int) -> TowerInputs:
    """The towers' side features, as of ``ts``, from the feature store (row 0 = unknown)."""
    users, items = features_as_of(store, user_ids, item_ids, ts)
    share = np.zeros((len(user_ids) + 1, n_categories), dtype=np.float32)
    for row, value in enumerate(users["u_category_share"].to_numpy(), start=1):
        if value is not None:
            share[row] = value
    category = np.zeros(len(item_ids) + 1, dtype=np.int64)
    category[1:] = items["i_category_idx"].fillna(0).to_numpy(dtype=np.int64)
    log_price = np.zeros(len(item_ids) + 1, dtype=np.float32)
    log_price[1:] = np.log1p(items["i_price"].fillna(0).clip(lower=0).to_numpy(dtype=np.float32))
    return TowerInputs(user_share=share, item_category=category, item_log_price=log_price)


def fingerprint_data(dataset: Dataset) -> str:
    hashed = pd.util.hash_pandas_object(dataset.interactions[["user_id", "item_id", "ts"]], index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def fingerprint_code() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in sorted([*root.glob("training/*.py"), *root.glob("feature_repo/*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def serving_sample(dataset: Dataset, candidates: CandidatesModel, store: FeatureStore,
                   score: Callable[[np.ndarray], np.ndarray], n_users: int = REFERENCE_USERS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranker inputs, scores, candidates per request) for users the model knows, drawn uniformly,
    as of the instant serving starts (the snapshot after the data, where the online store is
    materialized), with the bundle's candidate sources: what the API will rank right after
    deployment, with its features and clock."""
    ts = next_snapshot(dataset.end_ts)
    rng = np.random.default_rng(seed)
    known = candidates.retrieval.user_ids
    users = sorted(rng.choice(known, size=min(n_users, len(known)), replace=False).tolist())
    requests = requests_as_of(dataset.interactions, users, ts)
    found = generate(candidates, requests, unavailable_rows(candidates, dataset, ts))
    features = candidate_features(candidates.retrieval, store, found, ts)
    return features, score(features), found.sizes


def write_candidate_sources(staging: Path, model: CandidatesModel) -> None:
    """The co-visitation lists and the recent-popularity list (with counts) into a bundle."""
    model.covisitation.save(staging / bundle.COVISITATION)
    item_ids = model.retrieval.item_ids
    bundle.write_json(staging / bundle.POPULAR_ITEMS, [{"item_id": item_ids[r], "score": float(c)} for r, c in
                                                       zip(model.popular_rows, model.popular_counts, strict=True)])


def train_bundle(
    dataset: Dataset, store: FeatureStore, bundles_dir: Path, config: TrainConfig,
    on_step: Callable[[str], None] = lambda _: None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    train_towers: Callable[..., tuple[np.ndarray, np.ndarray, list[float]]] = train_two_tower,
    extra_artifacts: Callable[[Path, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> TrainResult:
    """Train, evaluate and publish a bundle. ``train_towers`` (same signature as ``train_two_tower``)
    is where the distributed trainer (``gpu/train.py``) plugs in; everything else is shared.

    ``extra_artifacts(staging, features, scores, group_sizes)`` may add files to the bundle from what
    the ranker will see when serving starts (:func:`serving_sample`): the CLI writes the drift
    reference this way, so training does not depend on monitoring."""
    t0, split = split_times(dataset, config)
    item_ids = dataset.items["item_id"].astype(str).tolist()
    history = dataset.interactions[dataset.interactions["ts"] < t0]
    user_ids = sorted(history["user_id"].unique())
    categories = category_vocabulary(dataset.items)

    on_step("two-tower training")
    inputs = tower_inputs(store, user_ids, item_ids, t0, len(categories))
    user_index = {u: i + 1 for i, u in enumerate(user_ids)}
    item_index = {it: i + 1 for i, it in enumerate(item_ids)}
    user_vectors, item_vectors, losses = train_towers(
        history["user_id"].map(user_index).to_numpy(), history["item_id"].map(item_index).to_numpy(),
        inputs, config.two_tower, progress=on_epoch,
    )
    on_step("FAISS index")
    index, index_params = build_index(item_vectors[1:], seed=config.two_tower.seed)
    model = RetrievalModel(item_ids, item_vectors[1:], user_ids, user_vectors[1:], index)

    on_step("ranker training set (point-in-time features)")
    interactions = dataset.interactions
    examples = build_examples(build_candidates_model(model, interactions, t0, config.candidates), store, dataset,
                              t0, split)
    on_step("LightGBM lambdarank")
    booster = train_ranker(examples, RANKER_FEATURES, config.ranker)

    version = bundle.new_version(fingerprint_data(dataset))
    staging = bundle.staging_dir(bundles_dir, version)
    export_onnx(booster, len(RANKER_FEATURES), staging / bundle.RANKER_ONNX)
    booster.save_model(str(staging / bundle.RANKER_NATIVE))
    onnx_ranker = OnnxRanker(staging / bundle.RANKER_ONNX)

    on_step("evaluation on the temporal split")
    evaluation = evaluate(dataset, build_candidates_model(model, interactions, split, config.candidates), store,
                          split, onnx_ranker.score)
    report = evaluation.report
    parity = check_parity(booster, onnx_ranker, evaluation.features, evaluation.group_sizes)
    if not parity.passed:
        raise ParityError(f"ONNX ranker disagrees with LightGBM: {parity.to_dict()}")

    on_step("writing the bundle")
    # Serving starts where the data ends (next_snapshot): its sources are built as of that instant.
    serving_candidates = build_candidates_model(model, interactions, next_snapshot(dataset.end_ts), config.candidates)
    if extra_artifacts is not None:
        on_step("ranker inputs as of serving start (drift reference)")
        extra_artifacts(staging, *serving_sample(dataset, serving_candidates, store, onnx_ranker.score))
    np.save(staging / bundle.ITEM_VECTORS, item_vectors[1:])
    np.save(staging / bundle.USER_VECTORS, user_vectors[1:])
    bundle.write_json(staging / bundle.ITEM_IDS, item_ids)
    bundle.write_json(staging / bundle.USER_IDS, user_ids)
    faiss.write_index(index, str(staging / bundle.RETRIEVAL_INDEX))
    write_candidate_sources(staging, serving_candidates)
    manifest = bundle.Manifest(
        version=version,
        created_at=time.time(),
        data_start_ts=dataset.start_ts,
        data_end_ts=dataset.end_ts,
        training_cutoff_ts=split,
        ranker_features=list(RANKER_FEATURES),
        categories=categories,
        index=index_params,
        candidates=config.candidates.to_dict(),
        metrics={
            "evaluation": asdict(report),
            "onnx_parity": parity.to_dict(),
            "two_tower_losses": losses,
            "two_tower_trainer": f"{train_towers.__module__}.{train_towers.__qualname__}",
            "ranker_examples": int(len(examples.labels)),
            "ranker_positives": int(examples.labels.sum()),
            "split": {"t0": t0, "split": split},
        },
        fingerprints={"data": fingerprint_data(dataset), "code": fingerprint_code()},
    )
    path = bundle.publish(staging, manifest)
    return TrainResult(path=path, manifest=manifest, evaluation=report, parity=parity)
