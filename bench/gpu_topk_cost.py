"""The cost model of gpu.topk (sharded exact top-k), measured: 2 gloo processes over loopback vs 1 process.

    .venv/bin/python bench/gpu_topk_cost.py [--items 400000 --dim 64 --k 100]

1. α and β: median all-gather times over message sizes, read as T = α + bytes/β (2 ranks: one
   exchange each way): α from a 4-byte message, β the median of size / (T − α) over larger ones;
   minimum times over 50 calls, i.e. without the scheduling noise of other jobs on a shared machine.
2. T_c(1): one process, one thread, exact top-k over the whole matrix.
3. Sharded, each rank one thread on half the rows: the local scan, the candidate all-gather and the
   end-to-end ``sharded_topk``, next to the model's prediction T_c(1)/2 + α + 12·Q·k/β.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpu.collectives import all_gather_single, shard_range
from gpu.topk import sharded_topk

QUERY_BATCHES = (1, 16, 256)


def timed(fn, repeats: int = 15, summary=statistics.median) -> float:
    """Median (or ``summary``) seconds of ``fn()`` after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return summary(times)


def data(n: int, d: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(q, d, generator=generator), torch.randn(n, d, generator=generator)


def worker(rank: int, world: int, port: int, args: argparse.Namespace, single: dict[int, float]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    sizes = [4, 64 << 10, 1 << 20, 4 << 20]
    times = []
    for size in sizes:
        x, out = torch.ones(size // 4), torch.empty(world * size // 4)
        times.append(timed(lambda x=x, out=out: all_gather_single(out, x), repeats=50, summary=min))
    alpha = times[0]  # a 4-byte message is all latency
    beta = statistics.median(s / (t - alpha) for s, t in zip(sizes[1:], times[1:], strict=True))
    if rank == 0:
        print(f"all-gather on 2 ranks: α = {alpha * 1e6:.0f} µs, β = {beta / 1e9:.2f} GB/s "
              f"(measured {', '.join(f'{s} B {t * 1e6:.0f} µs' for s, t in zip(sizes, times, strict=True))})")
        print(f"{'Q':>5} {'T_c(1) ms':>10} {'local ms':>9} {'gather ms':>10} {'sharded ms':>11} {'model ms':>9} "
              f"{'speedup':>8}")
    for q in QUERY_BATCHES:
        queries, items = data(args.items, args.dim, q)
        start, stop = shard_range(args.items, rank, world)
        shard = items[start:stop].contiguous()
        local = timed(lambda: (queries @ shard.T).topk(args.k, dim=1))  # noqa: B023
        candidates, gathered = torch.empty(q, args.k * 3), torch.empty(world * q, args.k * 3)  # 12 B per candidate
        comm = timed(lambda: all_gather_single(gathered, candidates))  # noqa: B023
        total = timed(lambda: sharded_topk(queries, shard, start, args.k))  # noqa: B023
        model = single[q] / world + (world - 1) * (alpha + 12 * q * args.k / beta)
        if rank == 0:
            print(f"{q:5d} {single[q] * 1e3:10.2f} {local * 1e3:9.2f} {comm * 1e3:10.3f} {total * 1e3:11.2f} "
                  f"{model * 1e3:9.2f} {single[q] / total:8.2f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    single = {}
    for q in QUERY_BATCHES:
        queries, items = data(args.items, args.dim, q)
        single[q] = timed(lambda: (queries @ items.T).topk(args.k, dim=1))  # noqa: B023
    print(f"{args.items:,} items x {args.dim} dims, k = {args.k}, fp32, 1 thread per process; "
          f"load average {os.getloadavg()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, args, single), nprocs=2)


if __name__ == "__main__":
    main()
