"""A bundle loaded for serving: verified whole, then held in memory as one immutable object.

Loading checks every checksum before anything is used, so a corrupt or half-copied bundle is
refused and the caller keeps serving what it had. Swapping bundles is swapping one reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from training import bundle
from training.candidates import CandidateSettings, CandidatesModel, model_from_parts
from training.covisitation import Covisitation
from training.ranker_features import RANKER_FEATURES
from training.ranker_onnx import OnnxRanker
from training.retrieval_index import configure_for_search
from training.two_stage import RetrievalModel


@dataclass(frozen=True)
class ServingModel:
    path: Path
    manifest: bundle.Manifest
    retrieval: RetrievalModel
    ranker: OnnxRanker
    candidates: CandidatesModel
    popular_items: list[str]
    popular_scores: np.ndarray

    @property
    def version(self) -> str:
        return self.manifest.version


def load_model(path: Path) -> ServingModel:
    """Verify and load a bundle; raises ``bundle.BundleError`` if it is incomplete or corrupt."""
    manifest = bundle.verify_bundle(path)
    if manifest.ranker_features != RANKER_FEATURES:
        raise bundle.BundleError(f"{path}: ranker features differ from this code's; retrain the bundle")
    # One native thread per library per worker process: processes scale, thread pools fight.
    faiss.omp_set_num_threads(1)
    index = faiss.read_index(str(path / bundle.RETRIEVAL_INDEX))
    configure_for_search(index, manifest.index)
    retrieval = RetrievalModel(
        item_ids=bundle.read_json(path / bundle.ITEM_IDS),
        item_vectors=np.load(path / bundle.ITEM_VECTORS),
        user_ids=bundle.read_json(path / bundle.USER_IDS),
        user_vectors=np.load(path / bundle.USER_VECTORS),
        index=index,
    )
    popular = bundle.read_json(path / bundle.POPULAR_ITEMS)
    total = sum(p["score"] for p in popular) or 1.0
    candidates = model_from_parts(retrieval, Covisitation.load(path / bundle.COVISITATION),
                                  [p["item_id"] for p in popular], np.array([p["score"] for p in popular]),
                                  CandidateSettings(**manifest.candidates))
    return ServingModel(
        path=path,
        manifest=manifest,
        retrieval=retrieval,
        ranker=OnnxRanker(path / bundle.RANKER_ONNX),
        candidates=candidates,
        popular_items=[p["item_id"] for p in popular],
        popular_scores=np.array([p["score"] / total for p in popular], dtype=np.float64),
    )
