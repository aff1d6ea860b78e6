"""Two-tower training from one CPU process to many GPUs: one script, the environment picks the setup.

    python -m gpu.train --synthetic 2000,5000,200000              one process: CPU, or GPU 0 if any
    torchrun --nproc_per_node=N -m gpu.train --home recsys-work   N processes: NCCL on GPUs, gloo on CPU

The model is training/two_tower.py's (same towers, in-batch softmax with log-Q correction and
accidental-hit removal, Adam); what changes is where its parts live and run:

- torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: one process per rank, NCCL when CUDA is available,
  else gloo. Without them: one plain process and no process group.
- The dense parameters (MLPs, category embedding) are replicated; DDP averages their gradients.
- The user and item id tables are sharded row-wise (gpu.collectives.ShardedEmbedding): each rank
  holds and optimises only its rows; lookups and their gradients travel by all-to-all.
- A global batch of --batch-size interactions is cut into W slices. Each rank encodes its slice and
  all-gathers the item vectors (autograd-aware), so every user is scored against every item of the
  global batch: the softmax, its log-Q correction and the accidental-hit mask are the same problem
  for any W, and 1 process and W processes with the same global batch and seed follow the same
  trajectory up to float rounding (tests/test_gpu_train.py).
- bf16 autocast on GPU; --accum micro-batches per optimizer step; checkpoints (a file per rank;
  resume needs the same W). Data order and initialisation use the same seed on every rank (ranks
  must agree on the batch and start from one table); torch's own generators are seeded per rank.

--synthetic trains on generated data and prints a JSON summary (samples/s, peak memory);
--home makes the standard bundle (see :func:`train_bundle_distributed`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from gpu.collectives import ShardedEmbedding, all_gather_with_grad
from training.two_tower import TowerInputs, TwoTowerConfig, TwoTowerModel, sampling_log_q


@dataclass(frozen=True)
class RunConfig:
    """How to run; the model's hyperparameters are TwoTowerConfig's."""

    accum: int = 1  # micro-batches (each a global batch of in-batch negatives) per optimizer step
    bf16: bool = True  # autocast, on GPU only
    max_steps: int | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    log_every: int = 50


@dataclass(frozen=True)
class Env:
    rank: int
    world: int
    device: torch.device


@dataclass
class TrainResult:
    user_vectors: np.ndarray  # row 0 = unknown, as training.two_tower returns them
    item_vectors: np.ndarray
    step_losses: list[float]  # global-batch mean loss of every optimizer step so far (resumed ones too)
    epoch_losses: list[float]
    summary: dict = field(default_factory=dict)


def setup() -> Env:
    """A process group from torchrun's variables (NCCL on GPU, gloo on CPU), or a single plain process."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return Env(0, 1, torch.device("cuda" if cuda else "cpu"))
    device = torch.device("cpu")
    if cuda:  # more ranks than GPUs share them round-robin (NCCL itself may refuse two ranks on one GPU)
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Env(dist.get_rank(), dist.get_world_size(), device)


def synthetic_data(n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                   n_categories: int = 8) -> tuple[np.ndarray, np.ndarray, TowerInputs]:
    """(user_idx, item_idx, inputs) shaped like the pipeline's, with no feature store needed.

    Users mostly pick items of a favourite category; item popularity is Zipf(0.8), so the log-Q
    correction has work to do.
    """
    rng = np.random.default_rng(seed)
    n_categories = min(n_categories, n_items)  # every category gets an item
    category = np.zeros(n_items + 1, dtype=np.int64)
    category[1:] = rng.permutation(np.arange(n_items) % n_categories)
    favourite = rng.integers(n_categories, size=n_users + 1)
    users = rng.integers(1, n_users + 1, size=n_interactions)
    anything = rng.integers(n_categories, size=n_interactions)
    wanted = np.where(rng.random(n_interactions) < 0.8, favourite[users], anything)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = np.empty(n_interactions, dtype=np.int64)
    for c in range(n_categories):
        pool, picks = np.flatnonzero(category == c), wanted == c
        items[picks] = rng.choice(pool, size=int(picks.sum()), p=popularity[pool - 1] / popularity[pool - 1].sum())
    share = np.full((n_users + 1, n_categories), 0.2 / n_categories, dtype=np.float32)
    share[np.arange(n_users + 1), favourite] += 0.8
    log_price = np.log1p(rng.lognormal(3.0, 1.0, size=n_items + 1)).astype(np.float32)
    return users, items, TowerInputs(user_share=share, item_category=category, item_log_price=log_price)


class Towers(nn.Module):
    """training.two_tower's model with its id tables sharded; forward encodes one (users, items) slice."""

    def __init__(self, model: TwoTowerModel):
        super().__init__()
        self.model = model
        for tower in (model.user_tower, model.item_tower):
            tower.ids = ShardedEmbedding(tower.ids.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.users(users), self.model.items(items)


def global_in_batch_loss(user_vectors: torch.Tensor, all_item_vectors: torch.Tensor, all_item_ids: torch.Tensor,
                         log_q: torch.Tensor, temperature: float, offset: int) -> torch.Tensor:
    """training.two_tower.in_batch_softmax_loss for this rank's rows of the global batch.

    Row i is global row ``offset + i``: it scores every item of the global batch, its positive is
    column ``offset + i``, logits are log-Q corrected and other copies of its own item are masked.
    """
    logits = (user_vectors @ all_item_vectors.T).float() / temperature - log_q[all_item_ids][None, :]
    rows = torch.arange(len(user_vectors), device=logits.device)
    labels = offset + rows
    hits = all_item_ids[labels][:, None] == all_item_ids[None, :]
    hits[rows, labels] = False
    return F.cross_entropy(logits.masked_fill(hits, torch.finfo(logits.dtype).min), labels)


def save_checkpoint(directory: Path, step: int, towers: Towers, optimizer: torch.optim.Optimizer,
                    losses: list[float], env: Env) -> None:
    """Each rank writes step-N/rank{r}.pt (its shard, its optimizer state, its generators); once all
    have, rank 0 points ``latest`` at step-N, so a crash mid-save leaves the previous checkpoint."""
    target = directory / f"step-{step:08d}"
    target.mkdir(parents=True, exist_ok=True)
    torch.save({
        "step": step, "world": env.world, "model": towers.state_dict(), "optimizer": optimizer.state_dict(),
        "losses": losses, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(env.device) if env.device.type == "cuda" else None,
    }, target / f"rank{env.rank}.pt")
    if dist.is_initialized():
        dist.barrier()
    if env.rank == 0:
        (directory / "latest.tmp").write_text(target.name)
        os.replace(directory / "latest.tmp", directory / "latest")
        for old in directory.glob("step-*"):
            if int(old.name.removeprefix("step-")) < step:
                for file in old.iterdir():
                    file.unlink()
                old.rmdir()


def load_checkpoint(directory: Path, towers: Towers, optimizer: torch.optim.Optimizer,
                    env: Env) -> tuple[int, list[float]]:
    """(step to resume at, losses so far); (0, []) when there is no checkpoint yet."""
    if not (directory / "latest").exists():
        return 0, []
    state = torch.load(directory / (directory / "latest").read_text() / f"rank{env.rank}.pt", map_location="cpu")
    if state["world"] != env.world:
        raise ValueError(f"{directory}: checkpoint written by {state['world']} ranks, resumed with {env.world}; "
                         "each rank's file holds its own embedding rows, so resume with the same number")
    towers.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], env.device)
    return state["step"], state["losses"]


def encode(tower: Callable[[torch.Tensor], torch.Tensor], n: int, device: torch.device) -> np.ndarray:
    """Vectors of ids 0..n-1. Under sharding this is a collective: every rank must call it."""
    with torch.no_grad():
        vectors = [tower(ids) for ids in torch.arange(n, device=device).split(1 << 16)]
    return torch.cat(vectors).float().cpu().numpy()


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(user_idx: np.ndarray, item_idx: np.ndarray, inputs: TowerInputs, config: TwoTowerConfig,
          run: RunConfig, env: Env, progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train on (user, item) index pairs, every rank with the same arguments; every rank gets the vectors."""
    global_batch = config.batch_size
    if global_batch % env.world:
        raise ValueError(f"batch size {global_batch} must be a multiple of the {env.world} ranks")
    local_batch = global_batch // env.world
    # Every rank must run the same shapes, so the last partial batch of an epoch is dropped.
    per_epoch = len(user_idx) // global_batch
    total = config.epochs * per_epoch // run.accum
    if total == 0:
        raise ValueError(f"{len(user_idx)} interactions make no step of {run.accum} x {global_batch}; "
                         "lower the batch size or --accum")
    total = min(total, run.max_steps or total)

    n_users, n_items = len(inputs.user_share) - 1, len(inputs.item_category) - 1
    torch.manual_seed(config.seed)  # the same on every rank: replicas start equal, shards are slices of one table
    towers = Towers(TwoTowerModel(n_users, n_items, inputs, config)).to(env.device)
    optimizer = torch.optim.Adam(towers.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    torch.manual_seed(config.seed + env.rank)
    start, losses = load_checkpoint(run.checkpoint_dir, towers, optimizer, env) if run.checkpoint_dir else (0, [])
    model = towers
    if dist.is_initialized():
        # Sharded tables differ per rank: DDP must neither broadcast nor all-reduce them (TorchRec's DMP
        # does the same). Buffers are the side features, equal on every rank: nothing to broadcast either.
        sharded = [f"{name}.weight" for name, m in towers.named_modules() if isinstance(m, ShardedEmbedding)]
        buffers = [name for name, _ in towers.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(towers, sharded + buffers)
        model = DistributedDataParallel(towers, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    log_q = sampling_log_q(np.bincount(item_idx, minlength=n_items + 1)).to(env.device)
    users_t = torch.as_tensor(user_idx, device=env.device)
    items_t = torch.as_tensor(item_idx, device=env.device)
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=run.bf16 and env.device.type == "cuda")
    order: dict[int, torch.Tensor] = {}

    def global_batch_rows(micro: int) -> torch.Tensor:
        epoch, b = divmod(micro, per_epoch)
        if epoch not in order:  # one permutation per epoch, the same on every rank
            permutation = np.random.default_rng([config.seed, epoch]).permutation(len(user_idx))
            order.clear()
            order[epoch] = torch.as_tensor(permutation, device=env.device)
        return order[epoch][b * global_batch:(b + 1) * global_batch]

    step_times = []
    towers.train()
    for step in range(start, total):
        began = time.perf_counter()
        step_loss = torch.zeros((), device=env.device)
        for micro in range(run.accum):
            rows = global_batch_rows(step * run.accum + micro)
            mine = rows[env.rank * local_batch:(env.rank + 1) * local_batch]
            last = micro == run.accum - 1
            with nullcontext() if last or model is towers else model.no_sync():
                with autocast:
                    user_vectors, item_vectors = model(users_t[mine], items_t[mine])
                    loss = global_in_batch_loss(user_vectors, all_gather_with_grad(item_vectors), items_t[rows],
                                                log_q, config.temperature, env.rank * local_batch)
                (loss / run.accum).backward()
            step_loss += loss.detach() / run.accum
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.all_reduce(step_loss)  # gloo has no AVG
            step_loss /= env.world
        losses.append(step_loss.item())  # .item() waits for the device, so the timing below is honest
        step_times.append(time.perf_counter() - began)
        if env.rank == 0 and run.log_every and (step + 1) % run.log_every == 0:
            print(f"step {step + 1}/{total} loss {losses[-1]:.4f} {1e3 * step_times[-1]:.1f} ms", flush=True)
        if run.checkpoint_dir and ((step + 1) % run.checkpoint_every == 0 or step + 1 == total):
            save_checkpoint(run.checkpoint_dir, step + 1, towers, optimizer, losses, env)
        epoch = step * run.accum // per_epoch
        if progress and ((step + 1) * run.accum // per_epoch > epoch or step + 1 == total):
            progress(epoch + 1, config.epochs, epoch_losses(losses, run.accum, per_epoch)[-1])

    towers.eval()
    result = TrainResult(
        user_vectors=encode(towers.model.users, n_users + 1, env.device),
        item_vectors=encode(towers.model.items, n_items + 1, env.device),
        step_losses=losses,
        epoch_losses=epoch_losses(losses, run.accum, per_epoch),
    )
    if step_times:
        step_s = statistics.median(step_times[1:] or step_times)  # the first step pays for warm-up
        result.summary = {
            "world": env.world, "backend": dist.get_backend() if dist.is_initialized() else "none",
            "device": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
            "threads_per_process": torch.get_num_threads(), "global_batch": global_batch, "accum": run.accum,
            "steps": len(step_times), "step_ms_median": 1e3 * step_s,
            "samples_per_s": global_batch * run.accum / step_s,
            # Forward scores plus the two backward products, per rank, as a rate over the whole step.
            "score_matmul_tflops_over_step": 6 * local_batch * global_batch * config.dim * run.accum / step_s / 1e12,
            "peak_memory_mib_rank0": peak_memory_mib(env.device),
            "final_loss": losses[-1],
        }
    return result


def epoch_losses(step_losses: list[float], accum: int, per_epoch: int) -> list[float]:
    """Mean step loss per epoch (a step belongs to the epoch of its first micro-batch)."""
    by_epoch: dict[int, list[float]] = {}
    for step, loss in enumerate(step_losses):
        by_epoch.setdefault(step * accum // per_epoch, []).append(loss)
    return [statistics.fmean(v) for _, v in sorted(by_epoch.items())]


def train_bundle_distributed(home: Path, config: TwoTowerConfig, run: RunConfig, env: Env) -> Path | None:
    """The standard bundle of a work directory, with the towers trained by every rank; its path on rank 0.

    Rank 0 runs training.pipeline.train_bundle with its two-tower step (``train_towers``) set to a
    function of ``train_two_tower``'s signature that broadcasts the step's inputs to the other ranks
    and trains with them; ranks > 0 wait for those inputs, train, and exit. Splits, tower features,
    FAISS index, ranker, ONNX parity, evaluation and the bundle files are the pipeline's own code,
    so serving loads the result like any bundle.
    """
    def distributed_towers(user_idx: np.ndarray, item_idx: np.ndarray, inputs: TowerInputs, config: TwoTowerConfig,
                           progress: Callable[[int, int, float], None] | None = None):
        payload = [user_idx, item_idx, inputs, config]
        if dist.is_initialized():
            dist.broadcast_object_list(payload, src=0)
        result = train(*payload, run, env, progress)
        return result.user_vectors, result.item_vectors, result.epoch_losses

    if env.rank > 0:
        payload = [None] * 4
        dist.broadcast_object_list(payload, src=0)
        train(*payload, run, env)
        return None
    if not (home / "features" / "feature_store.yaml").exists():
        raise FileNotFoundError(f"{home}: no feature store; run `recsys features apply --home {home}` "
                                "(or `recsys demo --no-serve`) first")
    from feast import FeatureStore

    from training import pipeline
    from training.dataset import Dataset

    dataset = Dataset.load(home / "data")
    store = FeatureStore(repo_path=str(home / "features"))
    result = pipeline.train_bundle(dataset, store, home / "bundles", pipeline.TrainConfig(two_tower=config),
                                   on_step=lambda step: print(step, flush=True), train_towers=distributed_towers)
    return result.path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TwoTowerConfig()
    parser = argparse.ArgumentParser(prog="python -m gpu.train", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", type=Path, help="work directory: read its data and features, publish a bundle")
    source.add_argument("--synthetic", metavar="USERS,ITEMS,INTERACTIONS",
                        type=lambda s: tuple(int(x) for x in s.split(",")), help="train on generated data")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch (all ranks)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on GPU")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--checkpoint-dir", type=Path, help="resume from it if it holds a checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, help="--synthetic: save losses and vectors (.npz)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = TwoTowerConfig(dim=args.dim, hidden=args.hidden, temperature=args.temperature, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    run = RunConfig(accum=args.accum, bf16=not args.no_bf16, max_steps=args.max_steps,
                    checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                    log_every=args.log_every)
    env = setup()
    try:
        if args.home:
            path = train_bundle_distributed(args.home, config, run, env)
            if path:
                print(f"bundle → {path}")
            return
        result = train(*synthetic_data(*args.synthetic, seed=args.seed), config, run, env)
        if env.rank == 0:
            print(json.dumps(result.summary), flush=True)
            if args.out:
                np.savez(args.out, step_losses=result.step_losses, user_vectors=result.user_vectors,
                         item_vectors=result.item_vectors)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
