"""Exploration policies: exact propensities, guardrails, replay, and what the impression log carries."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import faiss
import numpy as np
import pandas as pd
import pytest

from serving.event_log import LogWriter, read_records
from serving.exploration import (
    POLICIES,
    Candidates,
    EpsilonGreedyPolicy,
    ItemCounts,
    make_policy,
    plackett_luce_marginals,
)

K = 10
SPECS = {
    "greedy": {},
    "epsilon_greedy": {"epsilon": 0.25},
    "softmax": {"temperature": 0.5, "rate": 0.3},
    "squarecb": {"gamma": 3.0, "rate": 0.3},
    "thompson": {"rate": 0.3, "draws": 2000},
}


def candidates(n: int = 50, seed: int = 0, scale: float = 1.0) -> Candidates:
    scores = scale * np.random.default_rng(seed).standard_normal(n)
    return Candidates([f"i{j}" for j in range(n)], scores)


def thompson_counts() -> ItemCounts:
    return ItemCounts({f"i{j}": 50.0 for j in range(50)}, {f"i{j}": float(j % 9) for j in range(50)})


def policy(name: str, **overrides):
    counts = thompson_counts() if name == "thompson" else None
    return make_policy(name, {**SPECS[name], **overrides}, counts=counts)


def brute_force_marginals(u: np.ndarray, ranks: int) -> np.ndarray:
    w = np.exp(u - u.max())
    out = np.zeros((u.size, ranks))
    for order in itertools.permutations(range(u.size), ranks):
        p, left = 1.0, list(range(u.size))
        for i in order:
            p *= w[i] / w[left].sum()
            left.remove(i)
        out[list(order), range(ranks)] += p
    return out


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 50.0])
def test_plackett_luce_marginals_are_exact(scale):
    u = scale * np.random.default_rng(1).standard_normal(7)
    np.testing.assert_allclose(plackett_luce_marginals(u, 4), brute_force_marginals(u, 4), atol=1e-12)
    np.testing.assert_allclose(plackett_luce_marginals(u, 4, np.array([5, 2])),
                               brute_force_marginals(u, 4)[[5, 2]], atol=1e-12)


@pytest.mark.parametrize("name", list(POLICIES))
def test_marginals_are_a_distribution_and_match_the_shown_propensities(name):
    c = candidates()
    pi = policy(name)
    marginals = pi.marginals(c, K, "req", 0.0)
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-9)  # every position shows one item
    assert marginals.sum(axis=1).max() <= 1 + 1e-9  # an item is shown at most once
    for request in ("a", "b", "c"):
        slate = policy(name).choose(c, K, request, 0.0)  # a fresh Thompson policy: same counts
        np.testing.assert_allclose(slate.propensities, pi.marginals(c, K, request, 0.0)[slate.rows, np.arange(K)])


@pytest.mark.parametrize("name", ["epsilon_greedy", "softmax", "squarecb", "thompson"])
def test_propensities_are_the_frequencies_of_what_is_shown(name):
    c, n = candidates(), 2000 if name != "thompson" else 1000
    pi = policy(name)
    expected = pi.marginals(c, K, "freq", 0.0)
    shown = np.zeros_like(expected)
    for r in range(n):
        slate = policy(name).choose(c, K, f"freq-{r}", 0.0) if name == "thompson" else pi.choose(c, K, f"r{r}", 0.0)
        shown[slate.rows, np.arange(K)] += 1
    variance = expected * (1 - expected) / n
    if name == "thompson":  # its marginals are themselves a Monte-Carlo estimate
        variance += expected * (1 - expected) / SPECS["thompson"]["draws"]
    z = np.abs(shown / n - expected) / np.sqrt(variance + 1e-12)
    assert z.max() < 4.5


@pytest.mark.parametrize("name", ["epsilon_greedy", "softmax", "squarecb"])
def test_slate_propensity_is_the_frequency_of_the_whole_slate(name):
    c, n = candidates(n=6, seed=3), 4000
    pi = make_policy(name, {**SPECS[name], "protected": 0, "rate": 0.6, "max_explore": 0.6, "min_propensity": 0.01}
                     if name != "epsilon_greedy" else {"epsilon": 0.5, "max_explore": 0.6, "protected": 0})
    seen, probability = {}, {}
    for r in range(n):
        slate = pi.choose(c, 3, f"s{r}", 0.0)
        key = tuple(slate.rows)
        seen[key] = seen.get(key, 0) + 1
        probability[key] = slate.slate_propensity
    for key, count in seen.items():
        p = probability[key]
        assert abs(count / n - p) < 4.5 * np.sqrt(p * (1 - p) / n) + 1e-3


@pytest.mark.parametrize("name", ["epsilon_greedy", "softmax", "squarecb", "thompson"])
def test_guardrails_hold_whatever_the_params(name):
    # Asking for more exploration than the cap, two protected positions, extreme scores.
    eager = {"epsilon": 0.9} if name == "epsilon_greedy" else {"rate": 0.9}
    pi = policy(name, protected=2, max_explore=0.2, min_propensity=0.004, **eager)
    for seed in range(5):
        c = candidates(seed=seed, scale=8.0)
        greedy = np.argsort(-c.scores, kind="stable")[:K]
        marginals = pi.marginals(c, K, f"g{seed}", 0.0)
        assert (marginals[greedy[:2], [0, 1]] == 1).all()  # protected positions
        assert (1 - marginals[greedy, np.arange(K)]).max() <= 0.2 + 1e-9  # cap on the exploration rate
        assert marginals[marginals > 0].min() >= 0.004 - 1e-12  # floor: bounded importance weights
        slate = pi.choose(c, K, f"g{seed}", 0.0)
        assert slate.propensities.min() >= 0.004 - 1e-12


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_logged_request_replays_to_the_same_slate(name):
    c = candidates()
    first = policy(name).choose(c, K, "replay-me", 123.0)
    again = make_policy(name, policy(name).params, counts=thompson_counts()).choose(c, K, "replay-me", 123.0)
    np.testing.assert_array_equal(first.rows, again.rows)
    np.testing.assert_array_equal(first.propensities, again.propensities)
    if name != "greedy":
        slates = {tuple(policy(name, rate=1.0, max_explore=1.0).choose(c, K, f"other-{r}", 0.0).rows)
                  if name != "epsilon_greedy" else tuple(policy(name).choose(c, K, f"other-{r}", 0.0).rows)
                  for r in range(20)}
        assert len(slates) > 1


def test_epsilon_decays_as_documented_and_is_logged():
    pi = EpsilonGreedyPolicy(epsilon=0.2, epsilon_min=0.02, decay_s=100.0, max_explore=0.15, start_ts=1000.0)
    assert pi.epsilon_at(1000.0) == 0.15  # capped
    assert pi.epsilon_at(1300.0) == pytest.approx(0.1)  # 0.2 / sqrt(1 + 300 / 100)
    assert pi.epsilon_at(1e9) == 0.02  # floor
    slate = pi.choose(candidates(), K, "r", 1300.0)
    assert slate.state["epsilon"] == pytest.approx(0.1)
    lazily = EpsilonGreedyPolicy()
    lazily.choose(candidates(), K, "r", 5000.0)
    assert lazily.params["start_ts"] == 5000.0  # decay starts at the first request, and is logged


def test_thompson_sampling_learns_from_feedback():
    c = candidates(n=30, scale=0.0)  # the ranker cannot tell the items apart
    pi = make_policy("thompson", {"rate": 1.0, "max_explore": 1.0, "protected": 0})
    for r in range(300):
        slate = pi.choose(c, 5, f"t{r}", 0.0)
        for item in np.array(c.item_ids)[slate.rows]:
            if item in ("i3", "i7"):
                pi.observe(item, 1.0)
    marginals = pi.marginals(c, 5, "after", 0.0)
    assert marginals[[3, 7]].sum(axis=1).min() > 0.8  # the clicked items are now shown almost always


def test_short_and_empty_candidate_lists():
    for name in POLICIES:
        pi = policy(name)
        assert pi.choose(Candidates([], np.empty(0)), K, "e", 0.0).rows.size == 0
        slate = pi.choose(candidates(n=4), K, "short", 0.0)
        assert sorted(slate.rows) == [0, 1, 2, 3]


def test_unknown_policies_and_params_are_refused_by_name():
    with pytest.raises(ValueError, match="valid policies: greedy, epsilon_greedy"):
        make_policy("boltzmann")
    with pytest.raises(ValueError, match="no params \\['temp'\\]"):
        make_policy("softmax", {"temp": 1.0})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_policy("softmax", {"temperature": 0})


def test_the_impression_log_carries_what_replay_and_ope_need(tmp_path):
    from serving.online_features import ITEM_FEATURES, UserFeatures
    from serving.recommender import Recommender
    from training.candidates import CandidateSettings, model_from_parts
    from training.covisitation import build_covisitation
    from training.ranker_features import RANKER_FEATURES
    from training.two_stage import RetrievalModel

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((80, 8)).astype(np.float32)
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    retrieval = RetrievalModel([f"i{j}" for j in range(80)], vectors, ["u0"], rng.standard_normal((1, 8)), index)
    no_events = pd.DataFrame(columns=["user_id", "item_id", "ts"])
    no_covisitation = build_covisitation(no_events, retrieval.item_row, 80, window=1, neighbours=1)
    sources = model_from_parts(retrieval, no_covisitation, ["p0"], np.ones(1), CandidateSettings())
    model = SimpleNamespace(retrieval=retrieval, candidates=sources, version="v-test", popular_items=["p0"],
                            popular_scores=np.ones(1),
                            ranker=SimpleNamespace(score=lambda x: x[:, RANKER_FEATURES.index("retrieval_score")]
                                                   + 0.1 * np.sin(np.arange(len(x)))))
    features = SimpleNamespace(user=lambda user_id: UserFeatures({}, set()),
                               items=lambda ids: ({name: np.full(len(ids), np.nan) for name in ITEM_FEATURES}, False))
    log = LogWriter(tmp_path / "impressions.jsonl")
    pi = make_policy("softmax", {"temperature": 0.2, "rate": 0.3})
    recommender = Recommender(model, features, log, lambda: 1.7e9, policy=pi, n_candidates=60, log_candidates=30)
    result = recommender.recommend("u0", K, request_id="req-1")
    log.close()
    [record] = list(read_records(tmp_path / "impressions.jsonl"))

    assert result.policy == {"name": "softmax", "params": pi.params}
    assert record["policy"] == {"name": "softmax", "params": pi.params}
    assert record["policy_state"]["rate"] == 0.3 and 0 < record["slate_propensity"] <= 1
    ids, scores = record["candidates"]["item_ids"], np.array(record["candidates"]["scores"])
    assert len(ids) == 30 and (np.diff(scores) <= 0).all()
    # Offline, from the record alone: the same slate and the same propensities.
    logged = make_policy(record["policy"]["name"], record["policy"]["params"])
    replay = logged.choose(Candidates(ids, scores), record["k"], record["request_id"], record["ts"])
    assert [ids[r] for r in replay.rows] == [e["item_id"] for e in record["slate"]]
    np.testing.assert_allclose(replay.propensities, [e["propensity"] for e in record["slate"]])
    json.dumps(record)  # plain JSON throughout
