"""Exploration policies: the last step of a request, turning ranked candidates into the shown slate.

A policy returns the slate together with the exact probability that it showed each item at its
position (the propensity), which off-policy evaluation divides by. The greedy policy shows the
ranker's top k, so every propensity is exactly 1; stochastic policies plug in behind the same
``choose`` signature and are logged by name and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Slate:
    rows: np.ndarray  # indices into the ranked candidate arrays, in display order
    propensities: np.ndarray  # P(this item at this position | request)


class Policy(Protocol):
    name: str
    params: dict

    def choose(self, scores: np.ndarray, k: int, request_id: str) -> Slate: ...


@dataclass(frozen=True)
class GreedyPolicy:
    name: str = "greedy"
    params: dict = field(default_factory=dict)

    def choose(self, scores: np.ndarray, k: int, request_id: str) -> Slate:
        rows = np.argsort(-scores, kind="stable")[:k]
        return Slate(rows=rows, propensities=np.ones(len(rows)))
