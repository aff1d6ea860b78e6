"""The two exchanges of distributed two-tower training, written so that autograd sees through them.

- :func:`all_gather_with_grad`: every rank gets every rank's item vectors (the in-batch negatives of
  the global batch), and the gradient of each slice goes back to the rank that made it.
- :class:`ShardedEmbedding`: an id table split row-wise across ranks; lookups go to the owning rank
  and come back by all-to-all, and so do the gradients of the looked-up rows.

TorchRec does both (and more) but does not install against this project's torch (docs/gpu.md), so
they are written here with ``torch.distributed`` only; both gloo (CPU) and NCCL (GPU) run them.
Without a process group (one plain process) each reduces to its local operation.

Gradient scale. Each rank differentiates the mean loss of its own slice of the global batch, and
DDP *averages* the replicated parameters' gradients over the W ranks: together that is the gradient
of the global-batch mean, what one process with the whole batch computes. The exchanges below must
fit that convention:

- the all-gather's backward *sums* (reduce-scatter) the gradients every rank computed for a slice:
  slice s fed the loss of every rank, so its gradient is the sum of those contributions; DDP's
  division by W then happens further down, in the towers' parameters. Returning only the local
  gradient (what ``torch.distributed.all_gather`` amounts to: it does not back-propagate at all)
  loses the (W-1)/W of the gradient coming from the other ranks' users; dividing the sum by W here
  as well would count 1/W twice. (``torch.distributed.nn.all_gather`` also sums; the "gradient
  scaled by world size" reports about it come from pairing it with a globally normalised loss.)
- sharded rows are not under DDP, so nobody averages them: the gradients that arrive at the owner
  are a sum over ranks, and :class:`ShardedEmbedding` divides them by W itself.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

# torch 2.13 renamed all_gather_into_tensor (and warns on the old name); the GPU image has torch 2.11.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) that ``rank`` owns when ``n`` rows are split into blocks of ceil(n / world)."""
    per_rank = math.ceil(n / world)
    return min(n, rank * per_rank), min(n, (rank + 1) * per_rank)


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
    """Send the first ``in_splits[0]`` rows of ``x`` to rank 0, the next ``in_splits[1]`` to rank 1...;
    receive ``out_splits[r]`` rows from each rank r, in rank order."""
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
    return out


class _AllToAll(torch.autograd.Function):
    """all-to-all whose backward sends each row's gradient back the way the row came."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        ctx.splits = out_splits, in_splits
        return _all_to_all(x, out_splits, in_splits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out_splits, in_splits = ctx.splits
        return _all_to_all(grad, in_splits, out_splits), None, None


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _, world = rank_and_world()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        all_gather_single(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Reduce-scatter (SUM): rank s receives every rank's gradient for slice s and adds them up.
        # Written as all-to-all + sum, which gloo and NCCL both run on every torch version used here.
        _, world = rank_and_world()
        rows = grad.shape[0] // world
        received = _all_to_all(grad, [rows] * world, [rows] * world)
        return received.view(world, rows, *grad.shape[1:]).sum(0)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of every rank's ``x`` (same shape on every rank), in rank order; see the module doc."""
    if not dist.is_initialized():
        return x
    return _GatherWithGrad.apply(x)


class ShardedEmbedding(nn.Module):
    """An embedding table split row-wise: rank r owns rows ``shard_range(n, r, W)`` and their optimiser state.

    Lookup: 1) deduplicate the ids (``torch.unique`` sorts them, which also groups them by owner);
    2) exchange counts, then send each owner the ids it must serve (all-to-all of ids); 3) owners
    look their rows up; 4) the rows travel back (autograd-aware all-to-all) and are expanded to the
    requested order. Backward is the same path reversed: the gradient of each looked-up row goes back
    to its owner, where ``F.embedding``'s backward adds up the contributions of all ranks.

    NCCL has no sparse all-reduce, which rules out the usual "sparse gradients + DDP" for big tables
    on GPU; here no table is all-reduced at all: each rank has a dense gradient for its own shard only
    and its own optimiser state for those rows.
    """

    def __init__(self, full_weight: torch.Tensor):
        super().__init__()
        rank, world = rank_and_world()
        self.n = full_weight.shape[0]
        self.start, stop = shard_range(self.n, rank, world)
        self.rows_per_rank = math.ceil(self.n / world)
        self.weight = nn.Parameter(full_weight[self.start:stop].detach().clone())
        # Sharded rows are not averaged by DDP (see the module doc): match its mean here.
        self.weight.register_hook(lambda grad: grad / world)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return F.embedding(ids, self.weight)
        _, world = rank_and_world()
        unique, inverse = torch.unique(ids, return_inverse=True)
        send_counts = torch.bincount(unique // self.rows_per_rank, minlength=world)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        wanted = _all_to_all(unique, recv, send)
        rows = F.embedding(wanted - self.start, self.weight)
        return _AllToAll.apply(rows, send, recv)[inverse]
