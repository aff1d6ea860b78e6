"""The simulator is ground truth for later work: it must be deterministic, in schema and true to its model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from training.dataset import Dataset
from training.simulator import DAY, DriftSpec, SimConfig, Simulator

DRIFT = DriftSpec(
    start_day=10,
    taste_shift_segment=0,
    taste_shift_strength=0.8,
    feature_shift={"price": 1.0, "age": 1.0},
)


@pytest.fixture(scope="module")
def tiny() -> tuple[Simulator, Dataset]:
    sim = Simulator(SimConfig.preset("tiny"))
    return sim, sim.generate()


def _grid(sim: Simulator) -> tuple[np.ndarray, np.ndarray]:
    """Every (user, item) pair, as id arrays."""
    users = np.repeat(sim.user_ids, sim.item_ids.size)
    items = np.tile(sim.item_ids, sim.user_ids.size)
    return users, items


def test_same_seed_gives_identical_data_and_another_seed_does_not(tiny: tuple[Simulator, Dataset]) -> None:
    _, data = tiny
    again = Simulator(SimConfig.preset("tiny")).generate()
    for name in ("interactions", "impressions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(again, name))
    assert data.meta == again.meta
    other = Simulator(SimConfig.preset("tiny", seed=1)).generate()
    assert not data.interactions.equals(other.interactions)
    assert not data.items.equals(other.items)


def test_frames_follow_the_normalised_schema(tiny: tuple[Simulator, Dataset]) -> None:
    sim, data = tiny
    inter, imp, users, items = data.interactions, data.impressions, data.users, data.items
    assert list(inter.columns) == ["user_id", "item_id", "ts", "weight"]
    assert list(imp.columns) == ["user_id", "item_id", "ts", "position", "clicked"]
    assert list(users.columns) == ["user_id", "age", "country", "segment"]
    assert list(items.columns) == ["item_id", "category", "price", "release_ts"]
    for frame, column in [
        (inter, "user_id"),
        (inter, "item_id"),
        (imp, "user_id"),
        (imp, "item_id"),
        (users, "user_id"),
        (users, "country"),
        (items, "item_id"),
        (items, "category"),
    ]:
        assert frame[column].map(type).eq(str).all(), column
    assert inter["ts"].dtype == np.int64 and imp["ts"].dtype == np.int64
    assert inter["weight"].dtype == np.float64 and (inter["weight"] == 1.0).all()
    assert imp["position"].dtype == np.int64 and imp["clicked"].dtype == bool
    assert set(imp["position"]) == set(range(1, sim.config.slate_size + 1))
    assert users["age"].dtype == np.int64 and users["segment"].dtype == np.int64
    assert items["price"].dtype == np.float64 and (items["price"] > 0).all()
    assert items["release_ts"].dtype == np.int64
    assert inter["ts"].is_monotonic_increasing and imp["ts"].is_monotonic_increasing
    clicks = imp.loc[imp["clicked"], ["user_id", "item_id", "ts"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(inter[["user_id", "item_id", "ts"]], clicks)
    assert data.meta == {"source": "simulator", "config": sim.config.to_dict()}
    assert 3_000 < len(inter) < 8_000


def test_slates_hold_distinct_items_at_consecutive_positions(tiny: tuple[Simulator, Dataset]) -> None:
    sim, data = tiny
    sessions = data.impressions.groupby(["user_id", "ts"])
    assert (sessions["item_id"].nunique() == sessions.size()).all()
    assert (sessions["position"].max() == sessions.size()).all()


def test_no_item_is_shown_before_its_release(tiny: tuple[Simulator, Dataset]) -> None:
    _, data = tiny
    shown = data.impressions.merge(data.items[["item_id", "release_ts"]], on="item_id")
    assert len(shown) == len(data.impressions)
    assert (shown["ts"] >= shown["release_ts"]).all()
    assert (shown["release_ts"] > data.meta["config"]["start_ts"]).any(), "new items should be shown too"


def test_click_probability_is_a_probability_decreasing_in_position(tiny: tuple[Simulator, Dataset]) -> None:
    sim, _ = tiny
    rng = np.random.default_rng(0)
    users = rng.choice(sim.user_ids, 300)
    items = rng.choice(sim.item_ids, 300)
    end = sim.config.start_ts + sim.config.n_days * DAY
    by_position = np.stack([sim.click_probability(users, items, position, end) for position in range(1, 11)])
    assert ((by_position > 0) & (by_position <= 1)).all()
    assert (np.diff(by_position, axis=0) < 0).all()
    one_user = sim.user_ids[:1].repeat(sim.item_ids.size)
    assert (sim.click_probability(one_user, sim.item_ids, 1, sim.release_ts - 1) == 0).all()


def test_click_probability_rejects_unknown_ids(tiny: tuple[Simulator, Dataset]) -> None:
    sim, _ = tiny
    with pytest.raises(KeyError, match="nobody"):
        sim.click_probability(["nobody"], [sim.item_ids[0]], [1], sim.config.start_ts)
    with pytest.raises(KeyError, match="nothing"):
        sim.click_probability([sim.user_ids[0]], ["nothing"], [1], sim.config.start_ts)


def test_logged_clicks_follow_the_stated_click_model(tiny: tuple[Simulator, Dataset]) -> None:
    sim, data = tiny
    imp = data.impressions.assign(
        p=sim.click_probability(
            data.impressions["user_id"],
            data.impressions["item_id"],
            data.impressions["position"],
            data.impressions["ts"],
        )
    )
    imp["p_bucket"] = pd.qcut(imp["p"], 5, labels=False)
    for key in ("position", "p_bucket"):
        stats = imp.groupby(key).agg(ctr=("clicked", "mean"), p=("p", "mean"), n=("p", "size"))
        tolerance = 4 * np.sqrt(stats["p"] * (1 - stats["p"]) / stats["n"])
        assert ((stats["ctr"] - stats["p"]).abs() <= tolerance).all(), stats
    assert 0.03 < imp["clicked"].mean() < 0.12


def test_taste_matters(tiny: tuple[Simulator, Dataset]) -> None:
    sim, data = tiny
    users, items = _grid(sim)
    end = sim.config.start_ts + sim.config.n_days * DAY
    p = sim.click_probability(users, items, 1, end).reshape(sim.user_ids.size, sim.item_ids.size)
    favourite = sim.favourite_category[:, None] == sim.item_category[None, :]
    assert p[favourite].mean() > 2 * p[~favourite].mean()
    # The logs show it too: clicks go to the favourite category far beyond its share of the catalogue.
    clicked_user = pd.Index(sim.user_ids).get_indexer(data.interactions["user_id"])
    clicked_item = pd.Index(sim.item_ids).get_indexer(data.interactions["item_id"])
    on_favourite = sim.favourite_category[clicked_user] == sim.item_category[clicked_item]
    catalogue_share = np.bincount(sim.item_category)[sim.favourite_category[clicked_user]] / sim.item_ids.size
    assert on_favourite.mean() > 2 * catalogue_share.mean()


def test_drift_changes_the_world_only_from_its_start() -> None:
    base_config = SimConfig.preset("tiny")
    base, drifted = Simulator(base_config), Simulator(replace(base_config, drift=DRIFT))
    users, items = _grid(base)
    drift_ts = base_config.start_ts + DRIFT.start_day * DAY
    np.testing.assert_array_equal(
        base.click_probability(users, items, 1, drift_ts - 1),
        drifted.click_probability(users, items, 1, drift_ts - 1),
    )
    after_base = base.click_probability(users, items, 1, drift_ts)
    after_drift = drifted.click_probability(users, items, 1, drift_ts)
    in_segment = np.repeat(base.segment == DRIFT.taste_shift_segment, base.item_ids.size)
    np.testing.assert_array_equal(after_base[~in_segment], after_drift[~in_segment])
    assert np.abs(after_base[in_segment] - after_drift[in_segment]).mean() > 0.01

    new_items = base.release_ts >= drift_ts
    assert new_items.any() and (~new_items).any()
    assert (drifted.items["price"][new_items] > base.items["price"][new_items]).all()
    assert drifted.items["price"][~new_items].equals(base.items["price"][~new_items])
    late_users = base.signup_day >= DRIFT.start_day
    assert late_users.any() and (~late_users).any()
    assert drifted.users["age"][late_users].mean() > base.users["age"][late_users].mean() + 5
    assert drifted.users["age"][~late_users].equals(base.users["age"][~late_users])


def test_config_and_world_round_trip_through_meta() -> None:
    config = replace(SimConfig.preset("tiny", seed=3), n_days=3, drift=DRIFT)
    assert SimConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    sim = Simulator(config)
    meta = json.loads(json.dumps(sim.generate().meta))
    rebuilt = Simulator.from_meta(meta)
    assert rebuilt.config == config
    users, items = _grid(sim)
    for ts in (config.start_ts, config.start_ts + DRIFT.start_day * DAY):
        np.testing.assert_array_equal(
            sim.click_probability(users, items, 2, ts), rebuilt.click_probability(users, items, 2, ts)
        )
    with pytest.raises(ValueError):
        Simulator.from_meta({"source": "movielens"})


def test_progress_is_reported_once_per_day() -> None:
    config = replace(SimConfig.preset("tiny"), n_days=4)
    calls: list[tuple[int, int]] = []
    Simulator(config).generate(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_presets() -> None:
    assert SimConfig.preset("medium").n_items == 100_000
    assert SimConfig.preset("small", seed=7).seed == 7
    with pytest.raises(ValueError, match="tiny, small, medium"):
        SimConfig.preset("huge")
    with pytest.raises(ValueError, match="feature_shift"):
        DriftSpec(start_day=1, feature_shift={"colour": 1.0})
