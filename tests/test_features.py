"""The batch feature tables against brute force: what a point-in-time join picks must be exact and leak-free.

A snapshot row at T (a UTC day boundary) holds what was known strictly before T. So for any day
boundary T, the latest row at or before T must hold the counts of events in [T - w, T); for an
arbitrary instant, the latest row is the one of the previous day boundary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.definitions import TIMESTAMP
from training.dataset import Dataset
from training.features import (
    DAY,
    build_feature_tables,
    item_available_ts,
    seen_items,
    unavailable_items,
)
from training.simulator import SimConfig, Simulator

BASE = 20_000 * DAY  # a UTC day boundary
WINDOWS = {"1d": 1, "7d": 7, "30d": 30}


# ---------------------------------------------------------------------------------------------
# Brute force


def seconds(column: pd.Series) -> np.ndarray:
    return ((column - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def brute_counts(ts: np.ndarray, at: int) -> dict[str, int]:
    """Events in [at - w days, at) per window, and all events before ``at``."""
    out = {name: int(np.sum((ts >= at - w * DAY) & (ts < at))) for name, w in WINDOWS.items()}
    out["total"] = int(np.sum(ts < at))
    return out


class AsOf:
    """The latest row at or before an instant, per entity: what a point-in-time join picks."""

    def __init__(self, table: pd.DataFrame, key: str):
        table = table.assign(_ts=seconds(table[TIMESTAMP]))
        self.rows = {entity: rows.sort_values("_ts") for entity, rows in table.groupby(key)}

    def __call__(self, entity: str, at: int) -> pd.Series | None:
        rows = self.rows.get(entity)
        if rows is None:
            return None
        rows = rows[rows["_ts"] <= at]
        return None if rows.empty else rows.iloc[-1]


def events_by(frame: pd.DataFrame, key: str) -> dict[str, np.ndarray]:
    return {entity: group["ts"].to_numpy(dtype=np.int64) for entity, group in frame.groupby(key)}


def check_user_row(row: pd.Series | None, ts: np.ndarray, at: int, categories_of_events: np.ndarray,
                   n_categories: int) -> None:
    """``row`` is what a join at ``at`` (a day boundary) returns; ``ts`` all the user's event times."""
    expected = brute_counts(ts, at)
    if row is None:
        assert expected["total"] == 0
        return
    got = {name: int(row[f"u_events_{name}"]) for name in ("1d", "7d", "30d", "total")}
    assert got == expected
    before = ts < at
    assert int(row["u_last_event_ts"]) == int(ts[before].max())
    share = np.bincount(categories_of_events[before], minlength=n_categories) / before.sum()
    np.testing.assert_allclose(np.asarray(row["u_category_share"], dtype=np.float64), share, atol=1e-6)


def check_item_row(row: pd.Series | None, clicks: np.ndarray, shown: np.ndarray, at: int) -> None:
    expected = brute_counts(clicks, at)
    shown_7d = int(np.sum((shown >= at - 7 * DAY) & (shown < at)))
    if row is None:
        assert expected["total"] == 0 and shown_7d == 0
        return
    got = {name: int(row[f"i_events_{name}"]) for name in ("1d", "7d", "30d", "total")}
    assert got == expected
    assert int(row["i_impressions_7d"]) == shown_7d


# ---------------------------------------------------------------------------------------------
# A small hand-made dataset with events on day boundaries, shared timestamps and window edges


def hand_dataset() -> Dataset:
    events = [
        ("u1", "a", BASE),  # exactly on a day boundary
        ("u1", "a", BASE + DAY - 1),  # last second of day 0
        ("u1", "b", BASE + DAY),  # exactly on the next boundary: not known by the row at BASE + DAY
        ("u1", "c", BASE + 2 * DAY + 5),
        ("u2", "b", BASE + 3 * DAY + 7),
        ("u2", "a", BASE + 3 * DAY + 7),  # same instant as the previous one
        ("u2", "c", BASE + 3 * DAY + 100),
        ("u1", "a", BASE + 9 * DAY + 3600),
        ("u2", "b", BASE + 10 * DAY),  # exactly 7 days after day 3
        ("u1", "b", BASE + 45 * DAY),
    ]
    interactions = pd.DataFrame(events, columns=["user_id", "item_id", "ts"])
    interactions["weight"] = 1.0
    interactions = interactions.sort_values("ts", kind="stable").reset_index(drop=True)
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "category": ["x", "y", None, "x", "y"],
            "price": [1.0, 2.0, np.nan, 4.0, 5.0],
            # a: released before its first interaction; b: unknown, so first interaction;
            # c: released after its first interaction; d: released later, never used; e: nothing known.
            "release_ts": pd.array([BASE - 5 * DAY + 100, None, BASE + 10 * DAY, BASE + 40 * DAY, None],
                                   dtype="Int64"),
        }
    )
    impressions = pd.DataFrame(
        [
            ("u1", "a", BASE, 1, True),
            ("u2", "a", BASE + 3 * DAY + 7, 1, True),
            ("u2", "b", BASE + 3 * DAY + 7, 2, True),
            ("u1", "a", BASE + 20 * DAY + 5, 1, False),  # shown, not clicked, long after its last click
            ("u2", "a", BASE + 22 * DAY, 3, False),
        ],
        columns=["user_id", "item_id", "ts", "position", "clicked"],
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"]})
    return Dataset(interactions=interactions, users=users, items=items, impressions=impressions)


def event_category_codes(dataset: Dataset, categories: list[str]) -> np.ndarray:
    category = dataset.items.set_index("item_id")["category"].fillna("unknown")
    return np.array([categories.index(category[i]) for i in dataset.interactions["item_id"]], dtype=np.int64)


def check_all_users(dataset: Dataset, tables, instants: list[int]) -> None:
    as_of = AsOf(tables.user_activity, "user_id")
    codes = event_category_codes(dataset, tables.categories)
    inter = dataset.interactions
    for user in dataset.users["user_id"]:
        mask = (inter["user_id"] == user).to_numpy()
        for at in instants:
            check_user_row(as_of(user, at), inter["ts"].to_numpy()[mask], at, codes[mask], len(tables.categories))


def test_hand_dataset_categories_are_sorted_with_unknown() -> None:
    tables = build_feature_tables(hand_dataset())
    assert tables.categories == ["unknown", "x", "y"]


def test_hand_dataset_user_rows_match_brute_force_at_every_day_boundary() -> None:
    dataset = hand_dataset()
    tables = build_feature_tables(dataset)
    boundaries = [BASE + d * DAY for d in range(-3, 90)]
    check_all_users(dataset, tables, boundaries)


def test_hand_dataset_event_on_a_boundary_is_not_in_that_boundarys_row() -> None:
    tables = build_feature_tables(hand_dataset())
    row = AsOf(tables.user_activity, "user_id")("u1", BASE + DAY)
    # Known strictly before BASE + DAY: the two day-0 events, not the one at BASE + DAY itself.
    assert (row["u_events_1d"], row["u_events_total"], row["u_last_event_ts"]) == (2, 2, BASE + DAY - 1)
    # Only item "a" (category "x" = index 1) so far.
    np.testing.assert_allclose(row["u_category_share"], [0.0, 1.0, 0.0])


def test_hand_dataset_arbitrary_instants_read_the_previous_day_boundary() -> None:
    dataset = hand_dataset()
    tables = build_feature_tables(dataset)
    as_of = AsOf(tables.user_activity, "user_id")
    codes = event_category_codes(dataset, tables.categories)
    inter = dataset.interactions
    rng = np.random.default_rng(1)
    for at in rng.integers(BASE - 3 * DAY, BASE + 80 * DAY, size=200):
        user = str(rng.choice(["u1", "u2", "u3"]))
        mask = (inter["user_id"] == user).to_numpy()
        boundary = int(at) // DAY * DAY
        check_user_row(as_of(user, int(at)), inter["ts"].to_numpy()[mask], boundary, codes[mask],
                       len(tables.categories))


def test_hand_dataset_item_rows_match_brute_force_including_impressions() -> None:
    dataset = hand_dataset()
    tables = build_feature_tables(dataset)
    as_of = AsOf(tables.item_activity, "item_id")
    clicks = events_by(dataset.interactions, "item_id")
    shown = events_by(dataset.impressions, "item_id")
    empty = np.empty(0, dtype=np.int64)
    for item in dataset.items["item_id"]:
        for at in [BASE + d * DAY for d in range(-3, 90)]:
            check_item_row(as_of(item, at), clicks.get(item, empty), shown.get(item, empty), at)
    # Item "a" is shown without a click on day 20 and day 22, long after its clicks: the 7-day
    # impression count must still follow (a stale one would inflate the ranker's i_ctr_7d).
    assert int(as_of("a", BASE + 21 * DAY)["i_impressions_7d"]) == 1
    assert int(as_of("a", BASE + 25 * DAY)["i_impressions_7d"]) == 2
    assert int(as_of("a", BASE + 29 * DAY)["i_impressions_7d"]) == 1  # the window's start is inclusive
    assert int(as_of("a", BASE + 30 * DAY)["i_impressions_7d"]) == 0


def test_hand_dataset_item_availability_and_attributes() -> None:
    dataset = hand_dataset()
    expected = {
        "a": BASE - 5 * DAY + 100,  # release, before the first interaction
        "b": BASE + DAY,  # no release: first interaction
        "c": BASE + 2 * DAY + 5,  # first interaction, before the release
        "d": BASE + 40 * DAY,  # release, never interacted
        "e": BASE,  # nothing known: the dataset's start
    }
    assert item_available_ts(dataset).to_dict() == expected

    tables = build_feature_tables(dataset)
    attrs = tables.item_attributes.set_index("item_id")
    assert dict(zip(attrs.index, seconds(attrs[TIMESTAMP]), strict=True)) == expected
    assert attrs["i_release_ts"].to_dict() == expected
    assert attrs["i_category_idx"].to_dict() == {"a": 1, "b": 2, "c": 0, "d": 1, "e": 2}
    assert attrs.loc["a", "i_price"] == pytest.approx(1.0)
    assert np.isnan(attrs.loc["c", "i_price"])


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_unavailable_items_are_exactly_those_available_after_ts(offset: int) -> None:
    dataset = hand_dataset()
    availability = {"a": BASE - 5 * DAY + 100, "b": BASE + DAY, "c": BASE + 2 * DAY + 5,
                    "d": BASE + 40 * DAY, "e": BASE}
    for pivot in availability.values():
        ts = pivot + offset
        assert unavailable_items(dataset, ts) == {i for i, t in availability.items() if t > ts}


def test_hand_dataset_item_activity_starts_the_day_after_availability() -> None:
    dataset = hand_dataset()
    tables = build_feature_tables(dataset)
    available = item_available_ts(dataset)
    activity = tables.item_activity.assign(_ts=seconds(tables.item_activity[TIMESTAMP]))
    for item, ts in available.items():
        rows = activity[activity["item_id"] == item]["_ts"]
        # Every item gets a row (zeros if never used) from the first day boundary after it exists...
        assert rows.min() == (ts // DAY + 1) * DAY
        # ...and none at or before the instant it entered the catalog.
        assert (rows > ts).all()


def test_seen_items_and_user_history() -> None:
    dataset = hand_dataset()
    expected: dict[str, set[str]] = {}
    for user, item in zip(dataset.interactions["user_id"], dataset.interactions["item_id"], strict=True):
        expected.setdefault(user, set()).add(item)
    assert seen_items(dataset.interactions) == expected
    early = dataset.interactions[dataset.interactions["ts"] < BASE + 3 * DAY]
    assert seen_items(early) == {"u1": {"a", "b", "c"}}

    history = build_feature_tables(dataset).user_history.set_index("user_id")
    assert {u: set(v) for u, v in history["u_seen_items"].items()} == expected
    assert all(list(v) == sorted(v) for v in history["u_seen_items"])
    # Stamped after the last event, so a lookup at "now" sees every event.
    assert (seconds(history[TIMESTAMP]) > dataset.end_ts).all()
    assert (seconds(history[TIMESTAMP]) % DAY == 0).all()


# ---------------------------------------------------------------------------------------------
# The tiny simulator


@pytest.fixture(scope="module")
def tiny():
    dataset = Simulator(SimConfig.preset("tiny")).generate()
    return dataset, build_feature_tables(dataset)


def test_tiny_user_rows_match_brute_force_at_random_days_and_instants(tiny) -> None:
    dataset, tables = tiny
    rng = np.random.default_rng(0)
    as_of = AsOf(tables.user_activity, "user_id")
    inter = dataset.interactions
    codes = event_category_codes(dataset, tables.categories)
    by_user = {u: np.flatnonzero((inter["user_id"] == u).to_numpy()) for u in dataset.users["user_id"]}
    first_day, last_day = dataset.start_ts // DAY - 2, dataset.end_ts // DAY + 35
    ts = inter["ts"].to_numpy()
    for _ in range(300):
        user = str(rng.choice(dataset.users["user_id"].to_numpy()))
        rows = by_user[user]
        at = int(rng.integers(first_day, last_day)) * DAY
        check_user_row(as_of(user, at), ts[rows], at, codes[rows], len(tables.categories))
        instant = int(rng.integers(first_day * DAY, last_day * DAY))
        check_user_row(as_of(user, instant), ts[rows], instant // DAY * DAY, codes[rows], len(tables.categories))


def test_tiny_item_rows_match_brute_force_at_random_days_and_instants(tiny) -> None:
    dataset, tables = tiny
    rng = np.random.default_rng(1)
    as_of = AsOf(tables.item_activity, "item_id")
    clicks = events_by(dataset.interactions, "item_id")
    shown = events_by(dataset.impressions, "item_id")
    empty = np.empty(0, dtype=np.int64)
    first_day, last_day = dataset.start_ts // DAY - 2, dataset.end_ts // DAY + 35
    for _ in range(300):
        item = str(rng.choice(dataset.items["item_id"].to_numpy()))
        at = int(rng.integers(first_day, last_day)) * DAY
        check_item_row(as_of(item, at), clicks.get(item, empty), shown.get(item, empty), at)
        instant = int(rng.integers(first_day * DAY, last_day * DAY))
        check_item_row(as_of(item, instant), clicks.get(item, empty), shown.get(item, empty), instant // DAY * DAY)


def test_tiny_no_row_counts_an_event_at_or_after_its_timestamp(tiny) -> None:
    dataset, tables = tiny
    ua = tables.user_activity
    row_ts = seconds(ua[TIMESTAMP])
    assert (row_ts % DAY == 0).all()
    by_user = {u: np.sort(t) for u, t in events_by(dataset.interactions, "user_id").items()}
    known = np.array([np.sum(by_user[u] < t) for u, t in zip(ua["user_id"], row_ts, strict=True)])
    np.testing.assert_array_equal(ua["u_events_total"].to_numpy(), known)
    assert (ua["u_last_event_ts"].to_numpy() < row_ts).all()
    shares = np.stack(ua["u_category_share"].to_numpy())
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)  # every row follows at least one event

    ia = tables.item_activity
    item_ts = seconds(ia[TIMESTAMP])
    by_item = {i: np.sort(t) for i, t in events_by(dataset.interactions, "item_id").items()}
    empty = np.empty(0, dtype=np.int64)
    known = np.array([np.sum(by_item.get(i, empty) < t) for i, t in zip(ia["item_id"], item_ts, strict=True)])
    np.testing.assert_array_equal(ia["i_events_total"].to_numpy(), known)


def test_tiny_future_events_do_not_change_past_rows(tiny) -> None:
    dataset, tables = tiny
    cut = (dataset.start_ts // DAY + 9) * DAY + 12_345  # mid-day, inside the simulated period
    past = build_feature_tables(dataset.before(cut))
    for name, key in (("user_activity", "user_id"), ("item_activity", "item_id")):
        full, truncated = getattr(tables, name), getattr(past, name)
        full = full[seconds(full[TIMESTAMP]) <= cut].sort_values([key, TIMESTAMP], ignore_index=True)
        truncated = truncated[seconds(truncated[TIMESTAMP]) <= cut].sort_values([key, TIMESTAMP], ignore_index=True)
        assert len(full) > 0
        pd.testing.assert_frame_equal(full, truncated)


def test_tiny_item_attributes_and_activity_respect_availability(tiny) -> None:
    dataset, tables = tiny
    first = dataset.interactions.groupby("item_id")["ts"].min()
    release = dataset.items.set_index("item_id")["release_ts"]
    expected = {i: int(min(release[i], first.get(i, np.inf))) for i in dataset.items["item_id"]}
    attrs = tables.item_attributes
    assert dict(zip(attrs["item_id"], seconds(attrs[TIMESTAMP]), strict=True)) == expected
    activity = tables.item_activity
    avail = activity["item_id"].map(expected).to_numpy()
    assert (seconds(activity[TIMESTAMP]) > avail).all()
    assert set(activity["item_id"]) == set(dataset.items["item_id"])
    mid = (dataset.start_ts + dataset.end_ts) // 2
    assert unavailable_items(dataset, mid) == {i for i, t in expected.items() if t > mid}
    assert 0 < len(unavailable_items(dataset, mid)) < len(expected)
