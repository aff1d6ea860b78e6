"""A synthetic world with a known click model: ground truth for exploration, off-policy evaluation, replay.

Real logs never reveal the click probability of an item that was not shown; this simulator does. It
builds users and items, runs a logging policy for ``n_days`` and records what was shown (impressions)
and clicked (interactions) in the normalised schema of :mod:`training.dataset`. Everything follows
from :class:`SimConfig` (seed included), so a dataset's ``meta`` is enough to rebuild the exact world
with :meth:`Simulator.from_meta` and to ask it for true click probabilities.

Generative model
----------------
- Categories ``k = 0..K-1`` have a unit-norm centroid ``m_k`` in ``R^d`` (``d = latent_dim``), a
  share of the catalogue and a base log-price.
- Users have a ``segment`` (0..3), an ``age`` whose mean grows with the segment, a ``country`` and a
  sign-up day (70% exist at the start, 30% join on a uniform later day and are active from then on).
  Their taste mixes category centroids: ``taste_u = 0.8 m_fav + 0.4 m_second + N(0, 0.5^2 / d)``,
  where the favourite category favours ``k % 4 == segment`` (so demographics inform cold start).
  Their activity (mean sessions a day) is lognormal with mean ``sessions_per_user_day``.
- Items have a category, ``price = exp(base_price_k + N(0, 0.4^2))``, a latent factor
  ``f_i = m_category + N(0, 0.5^2 / d)``, a heavy-tailed popularity ``log_pop_i ~ N(0, 1)`` and a
  ``release_ts``: half come out in the year before the start, the rest uniformly during the
  simulated days. Item ids follow release order, like auto-increment ids.

Click model (examination hypothesis)
------------------------------------
::

    p(click | u, i, position, t) = examination(position) * attractiveness(u, i, t)
    examination(position)        = position ** -ETA                          (position is 1-based)
    attractiveness(u, i, t)      = sigmoid(A * <taste_u(t), f_i> + B * log_pop_i
                                           + C * exp(-age_days_i(t) / TAU) + BIAS)

with ``age_days_i(t) = (t - release_ts_i) / 86400``; attractiveness is 0 before release. The
constants below give a logged CTR of about 4.5-8.5% (medium to tiny preset), and the taste term
dominates popularity: on ``small``, ranking by popularity times the user's past category mix roughly
doubles the held-out recall@20 of a plain popularity ranking.

Logging policy
--------------
Each day every signed-up user has ``Poisson(activity)`` sessions at uniform times in the day. A session
draws a candidate pool among the items released before the day starts: ``POOL_FACTOR * slate_size``
proportional to popularity and as many uniformly. With probability ``EXPLORE_RATE`` the session
explores: the slate is ``slate_size`` distinct uniform candidates in random order. Otherwise the slate
is sampled without replacement from the softmax of the true attractiveness logits over the pool
(Gumbel top-k) and shown in sampled order. Clicks are Bernoulli draws from the click model at their
positions and carry the impression's timestamp.

Drift
-----
:class:`DriftSpec` changes the world from ``start_day`` on: a taste shift is concept drift (it changes
click probabilities, and :meth:`Simulator.click_probability` follows it for ``ts >= drift start``);
feature shifts are covariate drift (they change what the model sees, not how users click).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from training.dataset import Dataset

DAY = 86_400
DEFAULT_START_TS = 1_767_225_600  # 2026-01-01T00:00:00Z

# Click model constants (see the module docstring).
A_TASTE = 3.0
B_POPULARITY = 0.4
C_FRESHNESS = 1.0
TAU_DAYS = 14.0
BIAS = -3.8
ETA = 0.8

# World constants.
N_SEGMENTS = 4
SEGMENT_SHARE = (0.3, 0.3, 0.25, 0.15)
SEGMENT_AGE_MEAN = (24.0, 33.0, 45.0, 58.0)
AGE_SD = 8.0
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP")
COUNTRY_SHARE = (0.35, 0.12, 0.12, 0.1, 0.11, 0.12, 0.08)
SEGMENT_CATEGORY_WEIGHT = 4.0  # how much more a segment's own categories are picked as favourite
TASTE_FAVOURITE, TASTE_SECOND, TASTE_NOISE = 0.8, 0.4, 0.5
ITEM_NOISE = 0.5
LOG_POP_SD = 1.0
LOG_PRICE_SD = 0.4
ACTIVITY_LOG_SD = 0.8
NEW_USER_FRACTION = 0.3
PRE_RELEASED_FRACTION = 0.5
PRE_RELEASE_WINDOW_DAYS = 365

# Logging policy constants.
POOL_FACTOR = 2
EXPLORE_RATE = 0.1

FEATURE_SHIFT_KEYS = ("price", "age")

_PRESETS: dict[str, dict] = {
    "tiny": dict(
        n_users=200, n_items=400, n_days=20, n_categories=8, latent_dim=8, sessions_per_user_day=2.0
    ),
    "small": dict(n_users=1_000, n_items=2_000, n_days=60, n_categories=12, latent_dim=16),
    "medium": dict(
        n_users=20_000, n_items=100_000, n_days=90, n_categories=24, latent_dim=16, sessions_per_user_day=1.6
    ),
}


@dataclass(frozen=True)
class DriftSpec:
    """A change of the world from ``start_day`` on, so drift detection and retraining have a known answer.

    - ``taste_shift_segment``: users of this segment move their taste toward the centroid of
      ``taste_shift_category`` (default ``(segment + 1) % n_categories``, a category of another
      segment): ``taste <- (1 - s) * taste + s * m_target`` with ``s = taste_shift_strength``. This is
      concept drift: click probabilities change for ``ts >= start_ts + start_day * 86400``.
    - ``feature_shift``: ``{"price": k}`` multiplies the price of items released on or after the drift
      start by ``exp(k * sd(log price))``; ``{"age": k}`` adds ``k * sd(age)`` to the age of users who
      sign up on or after ``start_day`` (with ``start_day == 0``, everyone). These are covariate drift:
      the click model ignores price and age, so only the features change.
    """

    start_day: int
    taste_shift_segment: int | None = None
    taste_shift_strength: float = 0.5
    taste_shift_category: int | None = None
    feature_shift: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start_day < 0:
            raise ValueError(f"drift start_day must be >= 0, got {self.start_day}")
        if not 0.0 <= self.taste_shift_strength <= 1.0:
            raise ValueError(f"taste_shift_strength must be in [0, 1], got {self.taste_shift_strength}")
        unknown = set(self.feature_shift) - set(FEATURE_SHIFT_KEYS)
        if unknown:
            raise ValueError(f"feature_shift keys must be among {FEATURE_SHIFT_KEYS}, got {sorted(unknown)}")


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated world and its logs; equal configs give bit-identical data."""

    n_users: int
    n_items: int
    n_days: int
    n_categories: int = 12
    latent_dim: int = 16
    slate_size: int = 10
    sessions_per_user_day: float = 1.2
    start_ts: int = DEFAULT_START_TS
    seed: int = 0
    drift: DriftSpec | None = None

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_days", "n_categories", "latent_dim", "slate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_items < self.slate_size:
            raise ValueError(f"n_items ({self.n_items}) must be >= slate_size ({self.slate_size})")
        if self.sessions_per_user_day <= 0:
            raise ValueError(f"sessions_per_user_day must be > 0, got {self.sessions_per_user_day}")
        segment = None if self.drift is None else self.drift.taste_shift_segment
        if segment is not None and not 0 <= segment < N_SEGMENTS:
            raise ValueError(f"taste_shift_segment must be in [0, {N_SEGMENTS}), got {segment}")
        category = None if self.drift is None else self.drift.taste_shift_category
        if category is not None and not 0 <= category < self.n_categories:
            raise ValueError(f"taste_shift_category must be in [0, {self.n_categories}), got {category}")

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> SimConfig:
        """Named sizes: ``tiny`` for fast tests, ``small`` for demos, ``medium`` for benchmarks."""
        if name not in _PRESETS:
            raise ValueError(f"unknown simulator preset {name!r}; valid presets: {', '.join(_PRESETS)}")
        return cls(**_PRESETS[name], seed=seed)

    def to_dict(self) -> dict:
        """A JSON-able dict, stored in ``Dataset.meta`` so the world can be rebuilt."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SimConfig:
        """Inverse of :meth:`to_dict` (also accepts the dict after a JSON round trip)."""
        data = dict(data)
        drift = data.pop("drift", None)
        return cls(**data, drift=None if drift is None else DriftSpec(**drift))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _first_occurrence(rows: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value within each row, so a slate has distinct items."""
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(rows, order, axis=1)
    first_sorted = np.ones(rows.shape, dtype=bool)
    first_sorted[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(2, len(str(n - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


class Simulator:
    """A deterministic world (from a :class:`SimConfig`) that logs data and answers true click probabilities.

    The hidden state is public on purpose, as ground truth for later checks: ``taste`` (users x d,
    before drift), ``item_factor`` (items x d), ``item_log_popularity``, ``item_category`` and
    ``favourite_category`` (category indices), ``segment``, ``release_ts``, ``signup_day``,
    ``activity``; row ``j`` of a user (item) array is ``user_ids[j]`` (``item_ids[j]``). ``users`` and
    ``items`` are the feature frames that :meth:`generate` returns (feature drift included).
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        cfg = config
        rng = np.random.default_rng([cfg.seed, 0])
        n_cat, dim = cfg.n_categories, cfg.latent_dim

        centroids = rng.standard_normal((n_cat, dim))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        category_share = rng.dirichlet(np.full(n_cat, 5.0))
        category_log_price = rng.uniform(np.log(5.0), np.log(200.0), n_cat)

        # Items, in release order.
        n_pre = max(cfg.slate_size, round(PRE_RELEASED_FRACTION * cfg.n_items))
        offsets = np.concatenate(
            [
                -rng.integers(1, PRE_RELEASE_WINDOW_DAYS * DAY, n_pre),
                rng.integers(0, cfg.n_days * DAY, cfg.n_items - n_pre),
            ]
        )
        self.release_ts = cfg.start_ts + np.sort(offsets).astype(np.int64)
        self.item_category = rng.choice(n_cat, cfg.n_items, p=category_share)
        log_price = category_log_price[self.item_category] + rng.normal(0.0, LOG_PRICE_SD, cfg.n_items)
        item_noise = rng.standard_normal((cfg.n_items, dim)) / np.sqrt(dim)
        self.item_factor = centroids[self.item_category] + ITEM_NOISE * item_noise
        self.item_log_popularity = rng.normal(0.0, LOG_POP_SD, cfg.n_items)

        # Users.
        self.segment = rng.choice(N_SEGMENTS, cfg.n_users, p=SEGMENT_SHARE)
        age = rng.normal(np.asarray(SEGMENT_AGE_MEAN)[self.segment], AGE_SD)
        country_index = rng.choice(len(COUNTRIES), cfg.n_users, p=COUNTRY_SHARE)
        country = np.asarray(COUNTRIES, dtype=object)[country_index]
        own = np.arange(n_cat)[None, :] % N_SEGMENTS == self.segment[:, None]
        preference = category_share[None, :] * np.where(own, SEGMENT_CATEGORY_WEIGHT, 1.0)
        cumulative = np.cumsum(preference / preference.sum(axis=1, keepdims=True), axis=1)
        favourite = (cumulative > rng.random((cfg.n_users, 1))).argmax(axis=1)
        second = (favourite + rng.integers(1, max(n_cat, 2), cfg.n_users)) % n_cat
        self.favourite_category = favourite
        self.taste = (
            TASTE_FAVOURITE * centroids[favourite]
            + TASTE_SECOND * centroids[second]
            + TASTE_NOISE * rng.standard_normal((cfg.n_users, dim)) / np.sqrt(dim)
        )
        self.activity = cfg.sessions_per_user_day * np.exp(
            rng.normal(-(ACTIVITY_LOG_SD**2) / 2, ACTIVITY_LOG_SD, cfg.n_users)
        )
        joins_later = rng.random(cfg.n_users) < NEW_USER_FRACTION
        self.signup_day = np.where(joins_later, rng.integers(1, max(cfg.n_days, 2), cfg.n_users), 0)

        # Drift, applied after every draw so a drifted world shares its base with the undrifted one.
        drift = cfg.drift
        self._drift_ts = None if drift is None else cfg.start_ts + drift.start_day * DAY
        self._taste_after = self.taste
        if drift is not None:
            if drift.taste_shift_segment is not None:
                target = drift.taste_shift_category
                if target is None:
                    target = (drift.taste_shift_segment + 1) % n_cat
                shifted = self.segment == drift.taste_shift_segment
                strength = drift.taste_shift_strength
                moved = (1 - strength) * self.taste[shifted] + strength * centroids[target]
                self._taste_after = self.taste.copy()
                self._taste_after[shifted] = moved
            log_price = log_price + drift.feature_shift.get("price", 0.0) * log_price.std() * (
                self.release_ts >= self._drift_ts
            )
            age = age + drift.feature_shift.get("age", 0.0) * age.std() * (self.signup_day >= drift.start_day)

        self.user_ids = _ids("u", cfg.n_users)
        self.item_ids = _ids("i", cfg.n_items)
        self._user_index = pd.Index(self.user_ids)
        self._item_index = pd.Index(self.item_ids)
        self._popularity_cumsum = np.cumsum(np.exp(self.item_log_popularity))
        category_width = max(2, len(str(n_cat - 1)))
        self.users = pd.DataFrame(
            {
                "user_id": self.user_ids,
                "age": np.clip(np.round(age), 16, 90).astype(np.int64),
                "country": country,
                "segment": self.segment.astype(np.int64),
            }
        )
        self.items = pd.DataFrame(
            {
                "item_id": self.item_ids,
                "category": np.array([f"c{k:0{category_width}d}" for k in self.item_category], dtype=object),
                "price": np.round(np.exp(log_price), 2),
                "release_ts": self.release_ts,
            }
        )

    @classmethod
    def from_meta(cls, meta: dict) -> Simulator:
        """Rebuild the world that generated a dataset, from its ``meta``."""
        if meta.get("source") != "simulator" or "config" not in meta:
            raise ValueError("dataset meta is not from the simulator (needs source='simulator' and config)")
        return cls(SimConfig.from_dict(meta["config"]))

    def click_probability(
        self,
        user_ids: Sequence[str] | np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        positions: int | Sequence[int] | np.ndarray,
        ts: int | Sequence[int] | np.ndarray,
    ) -> np.ndarray:
        """The true click probability of showing each item to each user at a 1-based position at ``ts``.

        ``user_ids`` and ``item_ids`` have equal length; ``positions`` and ``ts`` are scalars or arrays of
        that length. Raises ``KeyError`` with the first unknown id.
        """
        users = self._lookup(self._user_index, user_ids)
        items = self._lookup(self._item_index, item_ids)
        if users.shape != items.shape:
            raise ValueError(f"user_ids and item_ids differ in length: {users.size} != {items.size}")
        positions = np.broadcast_to(np.asarray(positions), users.shape)
        if (positions < 1).any():
            raise ValueError("positions are 1-based")
        ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), users.shape)
        attractiveness = np.where(ts >= self.release_ts[items], _sigmoid(self._logit(users, items, ts)), 0.0)
        return positions.astype(np.float64) ** -ETA * attractiveness

    def generate(self, progress: Callable[[int, int], None] | None = None) -> Dataset:
        """Run the logging policy day by day and return clicks, impressions, users and items."""
        cfg = self.config
        days = []
        for day in range(cfg.n_days):
            days.append(self._simulate_day(day))
            if progress is not None:
                progress(day + 1, cfg.n_days)
        users, items, ts, positions, clicked = (np.concatenate(parts) for parts in zip(*days, strict=True))
        del days  # the medium preset logs ~25M impressions: keep one copy of them in memory
        impressions = pd.DataFrame(
            {
                "user_id": self.user_ids[users],
                "item_id": self.item_ids[items],
                "ts": ts,
                "position": positions.astype(np.int64),
                "clicked": clicked,
            }
        )
        interactions = impressions.loc[clicked, ["user_id", "item_id", "ts"]].reset_index(drop=True)
        interactions["weight"] = 1.0
        return Dataset(
            interactions=interactions,
            users=self.users.copy(),
            items=self.items.copy(),
            impressions=impressions,
            meta={"source": "simulator", "config": cfg.to_dict()},
        )

    @staticmethod
    def _lookup(index: pd.Index, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(ids, dtype=object))
        if ids.ndim != 1:
            raise ValueError("ids must be one-dimensional")
        found = index.get_indexer(ids)
        if (found < 0).any():
            raise KeyError(ids[found < 0][0])
        return found

    def _logit(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Attractiveness logit; ``users`` and ``ts`` have one shape, broadcasting against ``items``."""
        taste = self.taste[users]
        if self._drift_ts is not None:
            taste = np.where((ts >= self._drift_ts)[..., None], self._taste_after[users], taste)
        affinity = np.einsum("...d,...d->...", taste, self.item_factor[items])
        age_days = np.maximum(ts - self.release_ts[items], 0) / DAY
        return (
            A_TASTE * affinity
            + B_POPULARITY * self.item_log_popularity[items]
            + C_FRESHNESS * np.exp(-age_days / TAU_DAYS)
            + BIAS
        )

    def _simulate_day(self, day: int) -> tuple[np.ndarray, ...]:
        """One day of sessions; each day has its own random stream so days do not depend on each other."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, day])
        day_start = cfg.start_ts + day * DAY
        active = np.flatnonzero(self.signup_day <= day)
        users = np.repeat(active, rng.poisson(self.activity[active]))
        ts = day_start + rng.integers(0, DAY, users.size)
        order = np.argsort(ts, kind="stable")
        users, ts = users[order], ts[order]
        n_released = int(np.searchsorted(self.release_ts, day_start, side="right"))
        slates, logits = self._log_slates(rng, users, ts, n_released)
        positions = np.arange(1, cfg.slate_size + 1, dtype=np.int16)
        probability = positions.astype(np.float64) ** -ETA * _sigmoid(logits)
        clicked = rng.random(probability.shape) < probability
        k = cfg.slate_size
        return (
            np.repeat(users, k).astype(np.int32),
            slates.ravel().astype(np.int32),
            np.repeat(ts, k).astype(np.int64),
            np.tile(positions, users.size),
            clicked.ravel(),
        )

    def _log_slates(
        self, rng: np.random.Generator, users: np.ndarray, ts: np.ndarray, n_released: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The logging policy: slates (sessions x slate_size item indices, by position) and their logits."""
        k = self.config.slate_size
        explore = rng.random(users.size) < EXPLORE_RATE
        pool, valid = self._candidate_pool(rng, explore, n_released)
        logits = self._logit(users[:, None], np.maximum(pool, 0), ts[:, None])
        scores = np.where(explore[:, None], 0.0, logits) + rng.gumbel(size=pool.shape)
        scores[~valid] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
        return np.take_along_axis(pool, top, axis=1), np.take_along_axis(logits, top, axis=1)

    def _candidate_pool(
        self, rng: np.random.Generator, explore: np.ndarray, n_released: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Popularity-proportional and uniform candidates among released items, redrawn until each row
        has ``slate_size`` distinct usable ones (explore rows use only the uniform half)."""
        half = POOL_FACTOR * self.config.slate_size
        pool = np.empty((explore.size, 2 * half), dtype=np.int64)
        valid = np.empty(pool.shape, dtype=bool)
        total = self._popularity_cumsum[n_released - 1]
        todo = np.arange(explore.size)
        while todo.size:
            by_popularity = np.searchsorted(
                self._popularity_cumsum[:n_released], rng.random((todo.size, half)) * total, side="right"
            )
            uniform = rng.integers(0, n_released, (todo.size, half))
            draws = np.concatenate([np.minimum(by_popularity, n_released - 1), uniform], axis=1)
            draws[explore[todo], :half] = -1
            pool[todo] = draws
            valid[todo] = _first_occurrence(draws) & (draws >= 0)
            todo = todo[valid[todo].sum(axis=1) < self.config.slate_size]
        return pool, valid
