"""gpu.collectives and gpu.topk on gloo: sharded lookups, the all-gather's gradient, sharded top-k.

Each test spawns a few CPU processes (torch.multiprocessing, gloo over loopback); a worker that
fails an assertion fails the test with its traceback.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from gpu.collectives import ShardedEmbedding, all_gather_with_grad, shard_range
from gpu.topk import sharded_topk
from gpu.train import global_in_batch_loss
from training.two_tower import in_batch_softmax_loss


def spawn(worker, world: int) -> None:
    mp.spawn(worker, args=(world, free_port()), nprocs=world)


def join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lookup_worker(rank: int, world: int, port: int) -> None:
    join(rank, world, port)
    # 7 rows on 3 ranks: 3 + 3 + 1; 4 rows: 2 + 2 + 0 (rank 2 owns nothing but still asks).
    for n in (7, 4):
        full = torch.randn(n, 5, generator=seeded(n))
        table = ShardedEmbedding(full)
        requests = [torch.randint(n, (6,), generator=seeded(100 * n + r)) for r in range(world)]
        requests[0][:2] = n - 1  # duplicates of another rank's row
        out = table(requests[rank])
        assert torch.equal(out, full[requests[rank]])

        # Each rank's loss weighs its rows; the shard's gradient must be that of the mean of those losses.
        weights = [torch.randn(6, 5, generator=seeded(200 * n + r)) for r in range(world)]
        (out * weights[rank]).sum().backward()
        expected = torch.zeros_like(full)
        for ids, w in zip(requests, weights, strict=True):
            expected.index_add_(0, ids, w / world)
        start, stop = shard_range(n, rank, world)
        torch.testing.assert_close(table.weight.grad, expected[start:stop])
    dist.destroy_process_group()


def test_sharded_lookup_and_its_gradient_equal_the_unsharded_table():
    spawn(lookup_worker, 3)


def gather_worker(rank: int, world: int, port: int) -> None:
    join(rank, world, port)
    parts = [torch.randn(3, 4, generator=seeded(r)) for r in range(world)]
    x = parts[rank].clone().requires_grad_()
    gathered = all_gather_with_grad(x)
    assert torch.equal(gathered, torch.cat(parts))
    # Rank r's loss is <gathered, w_r>: x's gradient is the sum over ranks of w_r's rows for this slice.
    weights = [torch.randn(3 * world, 4, generator=seeded(10 + r)) for r in range(world)]
    (gathered * weights[rank]).sum().backward()
    rows = slice(3 * rank, 3 * rank + 3)
    torch.testing.assert_close(x.grad, sum(w[rows] for w in weights))
    dist.destroy_process_group()


def test_all_gather_sends_every_ranks_gradient_back_to_the_slices_owner():
    spawn(gather_worker, 2)


def topk_worker(rank: int, world: int, port: int) -> None:
    join(rank, world, port)
    # float64 so that no near-tie can flip between the sharded and the single-matrix product
    for n, k in ((1001, 10), (15, 10), (3, 3)):  # shards longer than k, shorter than k, of 1 row
        items = torch.randn(n, 8, generator=seeded(n), dtype=torch.float64)
        queries = torch.randn(6, 8, generator=seeded(n + 1), dtype=torch.float64)
        start, stop = shard_range(n, rank, world)
        scores, ids = sharded_topk(queries, items[start:stop], start, k)
        exact_scores, exact_ids = (queries @ items.T).topk(k, dim=1)
        assert torch.equal(ids, exact_ids), (n, k)
        torch.testing.assert_close(scores, exact_scores)
    dist.destroy_process_group()


def test_sharded_topk_equals_exact_topk_on_one_matrix():
    spawn(topk_worker, 2)


def test_global_loss_is_the_single_process_loss_cut_into_row_blocks():
    generator = seeded(0)
    users = torch.nn.functional.normalize(torch.randn(8, 4, generator=generator), dim=1)
    items = torch.nn.functional.normalize(torch.randn(8, 4, generator=generator), dim=1)
    item_ids = torch.tensor([1, 2, 3, 2, 5, 1, 7, 8])  # duplicates: accidental hits
    log_q = torch.log(torch.rand(10, generator=generator))
    whole = in_batch_softmax_loss(users, items, item_ids, log_q, 0.1)
    torch.testing.assert_close(global_in_batch_loss(users, items, item_ids, log_q, 0.1, 0), whole)
    halves = [global_in_batch_loss(users[r * 4:(r + 1) * 4], items, item_ids, log_q, 0.1, r * 4) for r in (0, 1)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
