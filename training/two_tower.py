"""Two-tower retrieval model: the first stage, which narrows a whole catalog to a few hundred items.

Retrieval has to score every item for every request, so the model is split into a user (query)
tower and an item (candidate) tower whose outputs meet only in a dot product. Item vectors are
computed once and put in a FAISS index; serving needs just the user vector and a nearest-neighbour
search. The ranker (second stage) then spends a richer model on the few hundred survivors.

Training uses in-batch softmax: for a batch of (user, item) interactions, each user's own item is
the positive and the other items of the batch are its negatives. Two corrections make that sound:

- **Sampling-bias (log-Q) correction**: in-batch negatives are drawn in proportion to item
  popularity, so popular items are over-penalised. Subtracting ``log q_j`` (the probability that
  item j appears in a batch) from its logit corrects the estimate (Yi et al., RecSys 2019).
- **Accidental-hit removal**: when a batch holds the same item twice, it must not serve as a
  negative for the user who interacted with it.

This module imports torch; serving never imports it (it loads the exported vectors instead).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 32
    hidden: int = 64
    temperature: float = 0.1
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 0.01
    weight_decay: float = 1e-6
    seed: int = 0


@dataclass(frozen=True)
class TowerInputs:
    """Index-encoded inputs. Row 0 of every id table is "unknown"."""

    user_share: np.ndarray  # [n_users + 1, n_categories] category share of each user
    item_category: np.ndarray  # [n_items + 1] category index of each item
    item_log_price: np.ndarray  # [n_items + 1]


def sampling_log_q(item_counts: np.ndarray) -> torch.Tensor:
    """log of the probability that each item appears as an in-batch candidate (its training frequency)."""
    counts = torch.as_tensor(item_counts, dtype=torch.float32)
    return torch.log((counts + 1.0) / (counts.sum() + len(counts)))


def remove_accidental_hits(logits: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """Mask off-diagonal logits whose candidate is the row's own positive item."""
    same_item = item_ids[:, None] == item_ids[None, :]
    off_diagonal = ~torch.eye(len(item_ids), dtype=torch.bool, device=logits.device)
    return logits.masked_fill(same_item & off_diagonal, torch.finfo(logits.dtype).min)


def in_batch_softmax_loss(
    user_vectors: torch.Tensor, item_vectors: torch.Tensor, item_ids: torch.Tensor,
    log_q: torch.Tensor, temperature: float,
) -> torch.Tensor:
    """Cross-entropy of each user's positive against the batch's other items, log-Q corrected."""
    logits = user_vectors @ item_vectors.T / temperature
    logits = logits - log_q[item_ids][None, :]
    logits = remove_accidental_hits(logits, item_ids)
    labels = torch.arange(len(item_ids), device=logits.device)
    return F.cross_entropy(logits, labels)


class Tower(nn.Module):
    """id embedding ⊕ side features → MLP → L2-normalised vector."""

    def __init__(self, n_ids: int, side_dim: int, config: TwoTowerConfig):
        super().__init__()
        self.ids = nn.Embedding(n_ids, config.dim)
        nn.init.normal_(self.ids.weight, std=0.05)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim + side_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim)
        )

    def forward(self, ids: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(torch.cat([self.ids(ids), side], dim=1)), dim=1)


class TwoTowerModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, inputs: TowerInputs, config: TwoTowerConfig):
        super().__init__()
        n_categories = inputs.user_share.shape[1]
        self.register_buffer("user_share", torch.as_tensor(inputs.user_share, dtype=torch.float32))
        self.register_buffer("item_category", torch.as_tensor(inputs.item_category, dtype=torch.long))
        self.register_buffer("item_log_price", torch.as_tensor(inputs.item_log_price, dtype=torch.float32))
        self.category = nn.Embedding(n_categories, 8)
        self.user_tower = Tower(n_users + 1, n_categories, config)
        self.item_tower = Tower(n_items + 1, 8 + 1, config)

    def users(self, user_idx: torch.Tensor) -> torch.Tensor:
        return self.user_tower(user_idx, self.user_share[user_idx])

    def items(self, item_idx: torch.Tensor) -> torch.Tensor:
        side = torch.cat([self.category(self.item_category[item_idx]), self.item_log_price[item_idx, None]], 1)
        return self.item_tower(item_idx, side)


def train_two_tower(
    user_idx: np.ndarray, item_idx: np.ndarray, inputs: TowerInputs, config: TwoTowerConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Train on (user, item) index pairs; return user vectors, item vectors and per-epoch losses.

    Vectors are indexed like the inputs (row 0 = unknown) and L2-normalised, so inner product
    equals cosine similarity in the FAISS index.
    """
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    n_users, n_items = len(inputs.user_share) - 1, len(inputs.item_category) - 1
    model = TwoTowerModel(n_users, n_items, inputs, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    log_q = sampling_log_q(np.bincount(item_idx, minlength=n_items + 1))
    users_t, items_t = torch.as_tensor(user_idx), torch.as_tensor(item_idx)
    n_batches = max(1, math.ceil(len(user_idx) / config.batch_size))
    losses = []
    for epoch in range(config.epochs):
        order = torch.as_tensor(generator.permutation(len(user_idx)))
        total = 0.0
        for b in range(n_batches):
            batch = order[b * config.batch_size:(b + 1) * config.batch_size]
            loss = in_batch_softmax_loss(
                model.users(users_t[batch]), model.items(items_t[batch]), items_t[batch], log_q,
                config.temperature,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / n_batches)
        if progress:
            progress(epoch + 1, config.epochs, losses[-1])
    with torch.no_grad():
        model.eval()
        user_vectors = model.users(torch.arange(n_users + 1)).numpy()
        item_vectors = model.items(torch.arange(n_items + 1)).numpy()
    return user_vectors.astype(np.float32), item_vectors.astype(np.float32), losses
