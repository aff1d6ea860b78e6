"""Choosing and building the FAISS index over item vectors, by catalog size.

Vectors are L2-normalised, so inner product is cosine similarity and both index types below use
``METRIC_INNER_PRODUCT``.

- Up to ``EXACT_MAX_ITEMS`` items, a flat (exact) index: a single-query scan of 20k x 32 floats
  is well under a millisecond, and exact search has nothing to tune.
- Above it, IVF-Flat with ``nlist = 4 * sqrt(n)`` coarse cells, searched with ``nprobe`` cells.
  On clustered data (trained embeddings are) it reaches ~0.99 recall@100 at nprobe 32 while
  building in seconds, where HNSW takes tens of seconds to build for similar recall
  (shared/research/perf.md, FAISS section).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_MAX_ITEMS = 20_000
IVF_NPROBE = 32


def build_index(vectors: np.ndarray, seed: int = 0) -> tuple[faiss.Index, dict]:
    """An index over ``vectors`` (ids = row numbers) and the parameters to record in the manifest."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n <= EXACT_MAX_ITEMS:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"type": "flat_ip", "n": n, "dim": dim}
    nlist = int(4 * math.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(vectors)
    index.add(vectors)
    index.nprobe = IVF_NPROBE
    return index, {"type": "ivf_flat_ip", "n": n, "dim": dim, "nlist": nlist, "nprobe": IVF_NPROBE}


def configure_for_search(index: faiss.Index, params: dict) -> None:
    """Apply the recorded search parameters to a freshly read index."""
    if params.get("type") == "ivf_flat_ip":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
