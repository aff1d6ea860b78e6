"""The two-tower model: the in-batch softmax pieces against hand computation, and training on a planted problem."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.two_tower import (
    TowerInputs,
    TwoTowerConfig,
    in_batch_softmax_loss,
    remove_accidental_hits,
    sampling_log_q,
    train_two_tower,
)

# ---------------------------------------------------------------------------------------------
# Loss pieces


def test_remove_accidental_hits_masks_exactly_the_off_diagonal_duplicates() -> None:
    ids = [3, 1, 3, 2, 1, 3]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(ids), len(ids), generator=generator)
    masked = remove_accidental_hits(logits, torch.tensor(ids))
    lowest = torch.finfo(logits.dtype).min
    n_masked = 0
    for i in range(len(ids)):
        for j in range(len(ids)):
            if i != j and ids[i] == ids[j]:
                assert masked[i, j] == lowest, (i, j)
                n_masked += 1
            else:
                assert masked[i, j] == logits[i, j], (i, j)
    assert n_masked == 8  # item 3 three times: 6 pairs; item 1 twice: 2 pairs


def test_remove_accidental_hits_leaves_distinct_items_alone() -> None:
    logits = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    assert torch.equal(remove_accidental_hits(logits, torch.tensor([7, 8, 9, 10])), logits)


def test_sampling_log_q_is_the_log_of_add_one_smoothed_frequency() -> None:
    counts = np.array([0, 3, 1, 6])
    log_q = sampling_log_q(counts)
    total = counts.sum() + len(counts)  # 14
    expected = [math.log(1 / total), math.log(4 / total), math.log(2 / total), math.log(7 / total)]
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=1e-6)
    assert float(torch.exp(log_q).sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(log_q).all()  # an item never seen still gets a finite correction


def hand_loss(users: list[list[float]], items: list[list[float]], ids: list[int], log_q: list[float],
              temperature: float) -> float:
    """Mean over rows of -log softmax(row)[own item], skipping other columns holding the row's item."""
    total = 0.0
    for i, u in enumerate(users):
        logits = []
        for j, v in enumerate(items):
            if j != i and ids[j] == ids[i]:
                continue  # accidental hit: not a negative
            logits.append((j, sum(a * b for a, b in zip(u, v, strict=True)) / temperature - log_q[ids[j]]))
        denominator = sum(math.exp(x) for _, x in logits)
        own = next(x for j, x in logits if j == i)
        total += -(own - math.log(denominator))
    return total / len(users)


@pytest.mark.parametrize("ids", [[0, 1, 2], [0, 1, 0]], ids=["distinct", "duplicate"])
def test_in_batch_softmax_loss_matches_hand_computed_cross_entropy(ids: list[int]) -> None:
    users = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    items = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    log_q = [math.log(0.5), math.log(0.3), math.log(0.2)]
    loss = in_batch_softmax_loss(
        torch.tensor(users), torch.tensor(items), torch.tensor(ids), torch.tensor(log_q), temperature=0.5
    )
    assert float(loss) == pytest.approx(hand_loss(users, items, ids, log_q, 0.5), rel=1e-5)


def test_log_q_correction_lowers_the_penalty_from_a_popular_negative() -> None:
    """A negative that appears often (large q) must weigh less in the softmax than a rare one."""
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.7, 0.7]])
    ids = torch.tensor([0, 1])
    rare_negative = in_batch_softmax_loss(users, items, ids, torch.log(torch.tensor([0.5, 0.01])), 0.5)
    popular_negative = in_batch_softmax_loss(users, items, ids, torch.log(torch.tensor([0.5, 0.9])), 0.5)
    assert float(popular_negative) < float(rare_negative)


# ---------------------------------------------------------------------------------------------
# Training on a planted problem: each user only ever interacts with items of one category.

N_CATEGORIES, N_USERS, N_ITEMS = 4, 40, 40
CONFIG = TwoTowerConfig(dim=16, hidden=32, epochs=8, batch_size=64, seed=0)


def planted() -> tuple[np.ndarray, np.ndarray, TowerInputs, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    user_category = np.arange(N_USERS) % N_CATEGORIES
    item_category = np.arange(N_ITEMS) % N_CATEGORIES
    # Side features say nothing about taste: the model has to learn it from the interactions.
    inputs = TowerInputs(
        user_share=np.full((N_USERS + 1, N_CATEGORIES), 1.0 / N_CATEGORIES),
        item_category=np.concatenate([[0], item_category]),
        item_log_price=np.zeros(N_ITEMS + 1),
    )
    user_idx, item_idx = [], []
    for u in range(N_USERS):
        own = np.flatnonzero(item_category == user_category[u])
        for item in rng.choice(own, size=20):
            user_idx.append(u + 1)  # row 0 is "unknown"
            item_idx.append(item + 1)
    return np.array(user_idx), np.array(item_idx), inputs, user_category, item_category


@pytest.fixture(scope="module")
def trained():
    user_idx, item_idx, inputs, user_category, item_category = planted()
    epochs_seen = []
    users, items, losses = train_two_tower(
        user_idx, item_idx, inputs, CONFIG, progress=lambda e, n, loss: epochs_seen.append((e, n, loss))
    )
    return users, items, losses, epochs_seen, user_category, item_category


def test_training_reduces_the_loss(trained) -> None:
    _, _, losses, epochs_seen, _, _ = trained
    assert len(losses) == CONFIG.epochs
    assert [(e, n) for e, n, _ in epochs_seen] == [(e, CONFIG.epochs) for e in range(1, CONFIG.epochs + 1)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]
    assert min(losses[-3:]) < min(losses[:3])


def test_a_users_own_category_ranks_above_the_others(trained) -> None:
    users, items, _, _, user_category, item_category = trained
    scores = users[1:] @ items[1:].T
    per_category = N_ITEMS // N_CATEGORIES
    precision = [
        np.mean(item_category[np.argsort(-scores[u])[:per_category]] == user_category[u]) for u in range(N_USERS)
    ]
    # Chance is 1 / N_CATEGORIES = 0.25.
    assert np.mean(precision) >= 0.95
    # And on average an own-category item scores above an other-category one, for every user.
    same = item_category[None, :] == user_category[:, None]
    assert all(scores[u][same[u]].mean() > scores[u][~same[u]].mean() for u in range(N_USERS))


def test_vectors_are_unit_norm_and_indexed_like_the_inputs(trained) -> None:
    users, items, _, _, _, _ = trained
    assert users.shape == (N_USERS + 1, CONFIG.dim) and items.shape == (N_ITEMS + 1, CONFIG.dim)
    assert users.dtype == np.float32 and items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)


def test_same_seed_gives_identical_vectors_and_another_seed_does_not(trained) -> None:
    users, items, losses, _, _, _ = trained
    user_idx, item_idx, inputs, _, _ = planted()
    again_users, again_items, again_losses = train_two_tower(user_idx, item_idx, inputs, CONFIG)
    np.testing.assert_array_equal(again_users, users)
    np.testing.assert_array_equal(again_items, items)
    assert again_losses == losses
    other_users, _, _ = train_two_tower(user_idx, item_idx, inputs, replace(CONFIG, seed=1))
    assert not np.allclose(other_users, users)
