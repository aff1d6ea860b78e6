"""Exploration policies: the last step of a request, turning ranked candidates into the shown slate.

The ranker orders the candidates; a policy decides what is actually shown. Showing only the
ranker's top k (greedy) teaches the next model nothing about the items it ranked just below, and
leaves off-policy evaluation (OPE) nothing to compare against. A stochastic policy shows other
items sometimes and records, for every shown item, its **propensity**: the exact probability
``P(item i at position p | request)`` under the policy. OPE divides by it (``monitoring/ope.py``),
so it must be exact, and every policy can also give the whole matrix of these marginals for any
candidate list (:meth:`Policy.marginals`), which is how OPE computes a *target* policy's
propensities on logged requests.

Every policy works from the same :class:`Candidates` (ids and ranker scores, in any order) and
only looks at the best ``protected + pool`` of them, so the top-M candidates written to the
impression log are enough to recompute it offline.

Guardrails, shared by all stochastic policies (all in the policy's params):

- ``protected`` top positions always show the ranker's order (never explored);
- ``max_explore`` caps the exploration rate: at every position, the probability of showing an
  item other than the ranker's is at most this;
- ``min_propensity``: every item a policy can show has at least this propensity, so importance
  weights are bounded by ``1 / min_propensity``; the exploration pool shrinks to guarantee it;
- randomness comes from the request id (:func:`request_rng`), so replaying a logged request with
  the logged params (and state, for Thompson sampling) gives the same slate.

Policies (``name``: what explores):

- ``greedy``: nothing; every propensity is 1.
- ``epsilon_greedy``: each explorable slot independently, with probability ``eps_t``, swaps in a
  challenger drawn uniformly (without replacement) from the candidates ranked just below the
  slate; ``eps_t = min(max_explore, max(eps_min, eps_0 / sqrt(1 + (ts - start_ts) / decay_s)))``.
- ``softmax``: Plackett-Luce sampling of the explorable slots from ``exp(score / temperature)``.
- ``thompson``: Beta-Bernoulli Thompson sampling of item CTRs (counts from impressions and
  feedback), Monte-Carlo propensities.
- ``squarecb``: SquareCB (Foster & Rakhlin, 2020) with the ranker as its regression oracle.

The last three are mixtures; with ``rho = min(rate, max_explore)``::

    pi = (1 - rho) * greedy + rho * ((1 - eta) * D + eta * U)

where ``D`` is the policy's own distribution over the explorable slots, ``U`` a uniformly random
arrangement of the pool (every pool item has propensity ``1 / N`` at every explorable slot), and
``eta = min_propensity * N / rho`` the smallest uniform share that meets the floor. Marginals mix
the same way, so they are exact whenever ``D``'s are.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, Protocol

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Ranked candidates of one request: ids and ranker scores (higher is better), aligned."""

    item_ids: Sequence[str]
    scores: np.ndarray


@dataclass(frozen=True)
class Slate:
    rows: np.ndarray  # indices into the candidate arrays, in display order
    propensities: np.ndarray  # P(this item at this position | request)
    slate_propensity: float | None = None  # P(this whole slate | request), where defined
    state: dict = field(default_factory=dict)  # per-request values needed to replay (e.g. eps_t)


class Policy(Protocol):
    name: str

    @property
    def params(self) -> dict: ...

    def choose(self, candidates: Candidates, k: int, request_id: str, ts: float) -> Slate: ...

    def marginals(self, candidates: Candidates, k: int, request_id: str, ts: float) -> np.ndarray:
        """``(n_candidates, k)`` matrix of ``P(candidate i shown at position p)`` (0-based p)."""
        ...


def request_rng(request_id: str, stream: str = "") -> np.random.Generator:
    """A generator seeded from the request id, so a logged request replays to the same slate."""
    digest = hashlib.sha256(f"{request_id}\x00{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


# --- exact Plackett-Luce marginals --------------------------------------------------------------

# Trapezoid rule over the Gumbel noise of the item in question. The integrand is analytic in the
# strip |Im g| < pi/2, so the error decays like exp(-pi^2 / h) (~1e-17 at h = 0.25); the cut tails
# hold < 1e-14 of the Gumbel mass. Checked against enumeration of all permutations in the tests.
_STEP = 0.25
_NODES = np.arange(-3.5, 36.0 + _STEP, _STEP)
_WEIGHTS = _STEP * np.exp(-_NODES - np.exp(-_NODES))


def plackett_luce_marginals(utilities: np.ndarray, n_ranks: int, items: np.ndarray | None = None) -> np.ndarray:
    """``P(item i at rank r)`` for r < n_ranks when ranks are drawn by Plackett-Luce on ``exp(u)``
    (for the given ``items`` only, in that order, or all).

    Plackett-Luce is sorting ``u_j + G_j`` with iid standard Gumbel ``G_j``. Conditioning on the
    noise ``g`` of item ``i``, the others beat it independently, each with probability
    ``b_j(g) = 1 - exp(-exp(-(g + u_i - u_j)))``, so::

        P(i at rank r) = integral phi(g) * PoissonBinomial_r({b_j(g)}_{j != i}) dg

    with ``phi`` the Gumbel density: one dimension, computed to ~1e-15 by the trapezoid rule.
    """
    u = np.asarray(utilities, dtype=np.float64)
    items = np.arange(u.size) if items is None else np.asarray(items)
    gap = _NODES[None, :, None] + (u[items][None, :] - u[:, None])[:, None, :]  # (j, node, item)
    beat = -np.expm1(-np.exp(-np.maximum(gap, -40.0)))
    beat[items, :, np.arange(items.size)] = 0.0
    stay = 1.0 - beat
    count = np.zeros((n_ranks, _NODES.size, items.size))  # P(exactly r others beat the item)
    count[0] = 1.0
    for j in range(u.size):
        top = min(j + 1, n_ranks - 1)
        count[1 : top + 1] = count[1 : top + 1] * stay[j] + count[:top] * beat[j]
        count[0] *= stay[j]
    return np.einsum("g,rgi->ir", _WEIGHTS, count)


def _plackett_luce_sample(u: np.ndarray, n_ranks: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(-(u + rng.gumbel(size=u.size)), kind="stable")[:n_ranks]


def _plackett_luce_probability(u: np.ndarray, order: np.ndarray) -> float:
    w, left, p = np.exp(u - u.max()), np.ones(u.size, dtype=bool), 1.0
    for i in order:
        p *= w[i] / w[left].sum()  # summed afresh: subtracting would cancel catastrophically
        left[i] = False
    return float(p)


# --- where a policy explores --------------------------------------------------------------------


@dataclass(frozen=True)
class _Region:
    """Positions ``start .. start+slots-1`` are filled from ``pool`` (candidate rows, the greedy
    items of those slots first); every other shown position ``p`` shows ``ranked[p]``."""

    ranked: np.ndarray
    n_shown: int
    start: int
    slots: int
    pool: np.ndarray

    def rows(self, choice: np.ndarray) -> np.ndarray:
        """Candidate rows in display order, given the pool index chosen for each slot."""
        rows = self.ranked[: self.n_shown].copy()
        rows[self.start : self.start + self.slots] = self.pool[choice]
        return rows

    def propensities(self, explored: np.ndarray) -> np.ndarray:
        """Per position: 1 where fixed, the given propensities in the explorable slots."""
        props = np.ones(self.n_shown)
        props[self.start : self.start + self.slots] = explored
        return props

    def marginals(self, n: int, k: int, block: np.ndarray) -> np.ndarray:
        out = np.zeros((n, k))
        out[self.ranked[: self.n_shown], np.arange(self.n_shown)] = 1.0
        out[self.pool[:, None], np.arange(self.start, self.start + self.slots)[None, :]] = block
        return out


def _ranked(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _greedy_region(scores: np.ndarray, k: int) -> _Region:
    ranked = _ranked(scores)
    return _Region(ranked, min(k, ranked.size), 0, 0, ranked[:0])


def _falling(n: int, m: int) -> int:
    return math.perm(n, m)


@dataclass
class GreedyPolicy:
    """The ranker's top k; every propensity is 1."""

    name: ClassVar[str] = "greedy"

    @property
    def params(self) -> dict:
        return {}

    def choose(self, candidates: Candidates, k: int, request_id: str, ts: float) -> Slate:
        region = _greedy_region(candidates.scores, k)
        return Slate(region.ranked[: region.n_shown], np.ones(region.n_shown), 1.0)

    def marginals(self, candidates: Candidates, k: int, request_id: str, ts: float) -> np.ndarray:
        return _greedy_region(candidates.scores, k).marginals(len(candidates.scores), k, np.zeros((0, 0)))


@dataclass
class _Guarded:
    """Guardrail params shared by the stochastic policies (see the module docstring)."""

    protected: int = 1
    max_explore: float = 0.3
    min_propensity: float = 1e-3
    pool: int = 20

    def __post_init__(self) -> None:
        if self.protected < 0:
            raise ValueError(f"protected must be >= 0, got {self.protected}")
        if not 0.0 <= self.max_explore <= 1.0:
            raise ValueError(f"max_explore must be in [0, 1], got {self.max_explore}")
        if not 0.0 <= self.min_propensity < 1.0:
            raise ValueError(f"min_propensity must be in [0, 1), got {self.min_propensity}")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")

    @property
    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def _pool_limit(self, rate: float) -> int:
        """Most pool items an exploration of this rate can spread over and still meet the floor."""
        if self.min_propensity == 0:
            return self.pool
        return min(self.pool, int(math.floor(rate / self.min_propensity + 1e-9)))


@dataclass
class EpsilonGreedyPolicy(_Guarded):
    """Greedy, except each explorable slot swaps in a uniform challenger with probability ``eps_t``.

    Challengers are the candidates ranked just below the slate (up to ``pool`` explorable
    candidates in all, and at most ``eps_t / min_propensity`` of them). Swapped slots take
    distinct challengers: a uniformly random permutation of the challengers, read in slot order.
    So, exactly, with ``c`` challengers::

        P(greedy item of slot p at p) = 1 - eps_t      P(challenger at p) = eps_t / c
        P(slate) = prod_p (eps_t if swapped else 1 - eps_t) / (c (c-1) ... (c-m+1)),  m swaps
    """

    name: ClassVar[str] = "epsilon_greedy"
    epsilon: float = 0.1
    epsilon_min: float = 0.01
    decay_s: float = 7 * 86_400.0
    start_ts: float | None = None  # default: the first request this policy sees

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.epsilon_min <= self.epsilon <= 1.0:
            raise ValueError(f"need 0 <= epsilon_min <= epsilon <= 1, got {self.epsilon_min}, {self.epsilon}")
        if self.decay_s <= 0:
            raise ValueError(f"decay_s must be > 0, got {self.decay_s}")

    def epsilon_at(self, ts: float) -> float:
        if self.start_ts is None:
            self.start_ts = float(ts)
        elapsed = max(0.0, ts - self.start_ts)
        decayed = max(self.epsilon_min, self.epsilon / math.sqrt(1.0 + elapsed / self.decay_s))
        return min(self.max_explore, decayed)

    def _plan(self, scores: np.ndarray, k: int, ts: float) -> tuple[_Region, float, int, np.ndarray]:
        eps = self.epsilon_at(ts)
        ranked = _ranked(scores)
        n_shown = min(k, ranked.size)
        slots = max(0, n_shown - self.protected)
        challengers = max(0, min(self.pool - slots, ranked.size - self.protected - slots, self._pool_limit(eps)))
        explored = min(slots, challengers)
        first_challenger = self.protected + slots
        pool = np.concatenate([ranked[self.protected : self.protected + explored],
                               ranked[first_challenger : first_challenger + challengers]])
        region = _Region(ranked, n_shown, self.protected, explored, pool)
        block = np.zeros((pool.size, explored))
        if explored:
            block[np.arange(explored), np.arange(explored)] = 1.0 - eps
            block[explored:] = eps / challengers
        return region, eps, challengers, block

    def choose(self, candidates: Candidates, k: int, request_id: str, ts: float) -> Slate:
        region, eps, challengers, block = self._plan(candidates.scores, k, ts)
        rng = request_rng(request_id)
        swapped = rng.random(region.slots) < eps
        permutation = rng.permutation(challengers)[: region.slots]
        choice = np.where(swapped, region.slots + permutation, np.arange(region.slots)).astype(np.int64)
        n_swapped = int(swapped.sum())
        slate_p = eps**n_swapped * (1 - eps) ** (region.slots - n_swapped) / _falling(challengers, n_swapped)
        explored = block[choice, np.arange(region.slots)]
        return Slate(region.rows(choice), region.propensities(explored), float(slate_p),
                     {"epsilon": eps, "challengers": challengers})

    def marginals(self, candidates: Candidates, k: int, request_id: str, ts: float) -> np.ndarray:
        region, _, _, block = self._plan(candidates.scores, k, ts)
        return region.marginals(len(candidates.scores), k, block)


@dataclass
class _Mixture(_Guarded):
    """``(1 - rho) * greedy + rho * ((1 - eta) * D + eta * U)`` over the explorable slots."""

    rate: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")

    def _region(self, scores: np.ndarray, k: int) -> tuple[_Region, float, float]:
        rho = min(self.rate, self.max_explore)
        ranked = _ranked(scores)
        n_shown = min(k, ranked.size)
        size = max(0, min(ranked.size - self.protected, self._pool_limit(rho)))
        slots = max(0, min(n_shown - self.protected, size))
        if rho == 0 or slots == 0:
            return _Region(ranked, n_shown, 0, 0, ranked[:0]), 0.0, 0.0
        eta = min(1.0, self.min_propensity * size / rho)
        return _Region(ranked, n_shown, self.protected, slots, ranked[self.protected : self.protected + size]), rho, eta

    def _block(self, region: _Region, rho: float, eta: float, own: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The mixture's marginals of the given pool items (rows) at each explorable slot."""
        greedy = items[:, None] == np.arange(region.slots)[None, :]
        return (1 - rho) * greedy + rho * ((1 - eta) * own + eta / region.pool.size)

    def _prepare(self, candidates: Candidates, region: _Region):
        """What D needs about this request, read once (counts may change while it is served)."""
        return np.asarray(candidates.scores, dtype=np.float64)[region.pool]

    def _own(self, prepared, region: _Region, request_id: str, items: np.ndarray) -> np.ndarray:
        """D's marginals of the given pool items at each explorable slot: ``(items, slots)``."""
        raise NotImplementedError

    def _sample(self, prepared, region: _Region, rng: np.random.Generator) -> np.ndarray:
        """A draw from D: the pool index shown in each slot."""
        raise NotImplementedError

    def _own_probability(self, prepared, region: _Region, choice: np.ndarray) -> float | None:
        return None

    def _state(self, prepared) -> dict:
        return {}

    def choose(self, candidates: Candidates, k: int, request_id: str, ts: float) -> Slate:
        region, rho, eta = self._region(candidates.scores, k)
        if region.slots == 0:
            rows = region.ranked[: region.n_shown]
            return Slate(rows, np.ones(rows.size), 1.0, {"rate": 0.0})
        prepared = self._prepare(candidates, region)
        rng = request_rng(request_id)
        draw, greedy = rng.random(), np.arange(region.slots)
        if draw < 1 - rho:
            choice = greedy
        elif draw < 1 - rho + rho * eta:
            choice = rng.permutation(region.pool.size)[: region.slots]
        else:
            choice = self._sample(prepared, region, rng)
        own = self._own(prepared, region, request_id, choice)
        explored = np.diagonal(self._block(region, rho, eta, own, choice))
        own_p = self._own_probability(prepared, region, choice)
        slate_p = None
        if own_p is not None:
            uniform_p = 1.0 / _falling(region.pool.size, region.slots)
            slate_p = (1 - rho) * float(np.array_equal(choice, greedy)) + rho * ((1 - eta) * own_p + eta * uniform_p)
        state = {"rate": rho, "uniform_share": eta, "pool": int(region.pool.size), **self._state(prepared)}
        return Slate(region.rows(choice), region.propensities(explored), slate_p, state)

    def marginals(self, candidates: Candidates, k: int, request_id: str, ts: float) -> np.ndarray:
        region, rho, eta = self._region(candidates.scores, k)
        if region.slots == 0:
            return region.marginals(len(candidates.scores), k, np.zeros((0, 0)))
        items = np.arange(region.pool.size)
        own = self._own(self._prepare(candidates, region), region, request_id, items)
        block = self._block(region, rho, eta, own, items)
        return region.marginals(len(candidates.scores), k, block)


@dataclass
class SoftmaxPolicy(_Mixture):
    """D = Plackett-Luce on ``exp(score / temperature)`` over the pool: the slots are filled one by
    one, each time drawing from the softmax of the remaining items. Its marginals are exact
    (:func:`plackett_luce_marginals`), and so is the slate probability
    ``prod_p exp(u_{a_p}) / sum_{j not yet shown} exp(u_j)``. ``temperature`` is in score units."""

    name: ClassVar[str] = "softmax"
    temperature: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def _prepare(self, candidates: Candidates, region: _Region) -> np.ndarray:
        return super()._prepare(candidates, region) / self.temperature

    def _own(self, prepared: np.ndarray, region: _Region, request_id: str, items: np.ndarray) -> np.ndarray:
        return plackett_luce_marginals(prepared, region.slots, items)

    def _sample(self, prepared: np.ndarray, region: _Region, rng: np.random.Generator) -> np.ndarray:
        return _plackett_luce_sample(prepared, region.slots, rng)

    def _own_probability(self, prepared: np.ndarray, region: _Region, choice: np.ndarray) -> float:
        return _plackett_luce_probability(prepared, choice)


@dataclass
class SquareCBPolicy(_Mixture):
    """D = SquareCB per slot, with the ranker's scores as the regression oracle's predictions.

    Each explorable slot ``p`` has its own actions: its greedy item (the best) and the challengers
    ``m`` (pool items below the slate, in score order) with ``m mod slots == p``, so slots never
    compete for an item and draw independently. Inverse-gap weighting with ``A = |actions|``::

        P(a) = 1 / (A + gamma * (score_best - score_a))   for a != best;   P(best) = the rest

    Every action keeps a propensity of at least ``1 / (A + gamma * gap)``; ``gamma`` is in
    1/score units (larger: greedier).
    """

    name: ClassVar[str] = "squarecb"
    gamma: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def _prepare(self, candidates: Candidates, region: _Region) -> np.ndarray:
        scores, slots, size = super()._prepare(candidates, region), region.slots, region.pool.size
        slot_of = np.concatenate([np.arange(slots), np.arange(size - slots) % slots])
        n_actions = np.bincount(slot_of, minlength=slots)[slot_of]
        probs = 1.0 / (n_actions + self.gamma * (scores[slot_of] - scores))
        probs[:slots] = 0.0
        probs[:slots] = 1.0 - np.bincount(slot_of, weights=probs, minlength=slots)  # the best takes the rest
        own = np.zeros((size, slots))
        own[np.arange(size), slot_of] = probs
        return own

    def _own(self, prepared: np.ndarray, region: _Region, request_id: str, items: np.ndarray) -> np.ndarray:
        return prepared[items]

    def _sample(self, prepared: np.ndarray, region: _Region, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.choice(prepared.shape[0], p=prepared[:, p]) for p in range(region.slots)], np.int64)

    def _own_probability(self, prepared: np.ndarray, region: _Region, choice: np.ndarray) -> float:
        return float(np.prod(prepared[choice, np.arange(region.slots)]))


class ItemCounts:
    """Impressions and clicks per item, the evidence of Thompson sampling; safe across threads."""

    def __init__(self, impressions: dict[str, float] | None = None, clicks: dict[str, float] | None = None):
        self.impressions = dict(impressions or {})
        self.clicks = dict(clicks or {})
        self._lock = threading.Lock()

    def record_impressions(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            for item in item_ids:
                self.impressions[item] = self.impressions.get(item, 0.0) + 1.0

    def record_click(self, item_id: str, value: float = 1.0) -> None:
        with self._lock:
            self.clicks[item_id] = self.clicks.get(item_id, 0.0) + value

    def get(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, clicks) of each item."""
        with self._lock:
            return (np.array([self.impressions.get(i, 0.0) for i in item_ids]),
                    np.array([self.clicks.get(i, 0.0) for i in item_ids]))


@dataclass
class ThompsonPolicy(_Mixture):
    """D = Thompson sampling on item CTR: draw ``theta_i ~ Beta(alpha_i, beta_i)`` for every pool
    item and show them by decreasing ``theta``, with ``alpha_i = prior_clicks + clicks_i`` and
    ``beta_i = prior_impressions - prior_clicks + impressions_i - clicks_i`` (counts from
    :class:`ItemCounts`; shown items are counted as they are shown, clicks come from feedback).

    The rank marginals have no closed form, so they are estimated from ``draws`` extra posterior
    draws (seeded from the request id, so recomputing them gives the same numbers)::

        D_hat(i, p) = (c(i, p) + 1 / N) / (draws + 1)

    where ``c`` counts the draws that put pool item ``i`` at slot ``p``: the frequency mixed with a
    uniform pseudo-draw, a proper distribution whose floor ``1 / (N (draws + 1))`` is what ``draws``
    can resolve; its standard error is about ``sqrt(D (1 - D) / draws)``. The slate probability
    is not computed. The logged state carries each pool item's ``alpha`` and ``beta``.
    """

    name: ClassVar[str] = "thompson"
    prior_clicks: float = 1.0
    prior_impressions: float = 20.0
    draws: int = 1000
    counts: ItemCounts = field(default_factory=ItemCounts, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.prior_clicks < self.prior_impressions:
            raise ValueError("need 0 < prior_clicks < prior_impressions")
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")

    @property
    def params(self) -> dict:
        return {name: value for name, value in super().params.items() if name != "counts"}

    def _prepare(self, candidates: Candidates, region: _Region) -> tuple[np.ndarray, np.ndarray]:
        """The Beta posterior (alpha, beta) of each pool item, read once per request."""
        shown, clicked = self.counts.get([candidates.item_ids[r] for r in region.pool])
        clicked = np.minimum(clicked, shown)
        return self.prior_clicks + clicked, self.prior_impressions - self.prior_clicks + shown - clicked

    def _own(self, prepared: tuple[np.ndarray, np.ndarray], region: _Region, request_id: str,
             items: np.ndarray) -> np.ndarray:
        alpha, beta = prepared
        theta = request_rng(request_id, "thompson-propensity").beta(alpha, beta, size=(self.draws, alpha.size))
        top = np.argsort(-theta, axis=1, kind="stable")[:, : region.slots]
        hits = np.zeros((alpha.size, region.slots))
        np.add.at(hits, (top, np.broadcast_to(np.arange(region.slots), top.shape)), 1.0)
        return (hits[items] + 1.0 / alpha.size) / (self.draws + 1)

    def _sample(self, prepared: tuple[np.ndarray, np.ndarray], region: _Region,
                rng: np.random.Generator) -> np.ndarray:
        alpha, beta = prepared
        return np.argsort(-rng.beta(alpha, beta), kind="stable")[: region.slots]

    def _state(self, prepared: tuple[np.ndarray, np.ndarray]) -> dict:
        alpha, beta = prepared
        return {"alpha": alpha.tolist(), "beta": beta.tolist(), "draws": self.draws}

    def choose(self, candidates: Candidates, k: int, request_id: str, ts: float) -> Slate:
        slate = super().choose(candidates, k, request_id, ts)
        self.counts.record_impressions([candidates.item_ids[r] for r in slate.rows])
        return slate

    def observe(self, item_id: str, reward: float) -> None:
        """Feedback on a shown item (e.g. a click with value 1)."""
        self.counts.record_click(item_id, reward)


POLICIES: dict[str, type] = {
    cls.name: cls for cls in (GreedyPolicy, EpsilonGreedyPolicy, SoftmaxPolicy, ThompsonPolicy, SquareCBPolicy)
}


def make_policy(name: str, params: dict | None = None, counts: ItemCounts | None = None) -> Policy:
    """A policy from its logged (or configured) name and params; unknown names or params are refused."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    cls, params = POLICIES[name], dict(params or {})
    valid = {f.name for f in fields(cls)} - {"counts"}
    unknown = set(params) - valid
    if unknown:
        listed = ", ".join(sorted(valid)) or "none"
        raise ValueError(f"policy {name!r} has no params {sorted(unknown)}; valid: {listed}")
    if counts is not None and cls is ThompsonPolicy:
        params["counts"] = counts
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: bad params: {exc}") from exc
