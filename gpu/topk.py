"""Exact top-k retrieval over an item matrix split row-wise across ranks: local top-k, then a global merge.

Each rank scores the (replicated) query batch against its own rows, keeps its best k, and the W
lists of k candidates are all-gathered and merged by a second top-k. The result equals top-k over
the whole matrix on one device: an item in the global top k is in the top k of its own shard (fewer
than k items of that shard beat it), so it survives the local cut. Ties between equal scores may be
broken differently.

Cost model per query batch (α-β, i.e. latency-bandwidth). Q queries of d dims, N items on W ranks,
k results; b bytes per item-vector element; a candidate is a 4-byte score plus an 8-byte id.

- compute, per rank: scoring is a Q×d by d×(N/W) matrix product, 2·Q·N·d/W FLOPs, which must read
  the shard (N·d·b/W bytes), then a selection over Q·N/W scores. For small Q (serving) the scan is
  memory-bound, ``T_c(W) ≈ N·d·b / (W·M)`` with M the memory bandwidth; for large Q it is
  compute-bound, ``≈ 2·Q·N·d / (W·F)`` with F the matrix-product rate. Either way T_c(W) = T_c(1)/W.
- communication: an all-gather of Q·k candidates from every rank; with a ring,
  ``T_a(W) = (W−1)·(α + 12·Q·k/β)``, α the per-message latency and β the link bandwidth.
  It does not depend on N.
- merge: a top-k over W·k candidates per query, O(Q·W·k), small next to the rest.

So ``T(W) = T_c(1)/W + (W−1)·(α + 12·Q·k/β)``, and adding ranks pays while each rank's share of
the scan, ``T_c(1)/W``, is longer than one message: ``α + 12·Q·k/β``. Large catalogs (the scan
grows with N, the message does not) are worth sharding; small ones lose to the latency α.
``bench/gpu_topk_cost.py`` measures α, β and the scan rate on this machine (gloo over loopback)
and compares the model with measured times; docs/gpu.md has the figures.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F

from gpu.collectives import all_gather_single, rank_and_world


def _gather_columns(x: torch.Tensor) -> torch.Tensor:
    """[Q, k] on each of W ranks → [Q, W·k] on every rank (rank r's columns at r·k)."""
    _, world = rank_and_world()
    out = x.new_empty((world * x.shape[0], x.shape[1]))
    all_gather_single(out, x.contiguous())
    return out.view(world, *x.shape).transpose(0, 1).reshape(x.shape[0], -1)


def sharded_topk(queries: torch.Tensor, shard: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner-product scores and global item rows, best first, over the items of all ranks.

    ``queries`` [Q, d] must be the same on every rank; ``shard`` holds this rank's items, global rows
    ``offset ..``; k must not exceed the total number of items. Every rank gets the result.
    """
    scores = queries @ shard.T
    local = min(k, shard.shape[0])
    values, rows = scores.topk(local, dim=1)
    ids = rows + offset
    # Every rank must send the same shape: pad a short shard with entries that never win.
    values = F.pad(values, (0, k - local), value=float("-inf"))
    ids = F.pad(ids, (0, k - local), value=-1)
    if dist.is_initialized():
        values, ids = _gather_columns(values), _gather_columns(ids)
    best, pick = values.topk(k, dim=1)
    return best, ids.gather(1, pick)
