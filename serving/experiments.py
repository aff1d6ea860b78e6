"""A/B experiments: arms, traffic shares and a stable assignment of users to arms.

The config is a YAML or JSON file (``RECSYS_EXPERIMENTS``)::

    name: ranker-v2            # optional
    salt: exp-2026-01          # change it to reshuffle users between experiments
    control: control           # the arm lifts are measured against (default: the first)
    arms:
      - name: control
        bundle: current        # the bundle the server serves (and /admin/reload swaps), or a path
        policy: greedy
        share: 0.5
      - name: explore
        bundle: current
        policy: softmax
        params: {temperature: 0.3}
        share: 0.5

A user's arm is a pure function of the salt and the user id: ``u = sha256("salt:user") / 2^256`` in
[0, 1), and the arm whose cumulative share interval holds ``u``. So a user stays in one arm across
requests, processes and restarts, and the logs (each impression's ``arm``) can be checked against
the configured shares (``monitoring/ab.py``: the sample-ratio-mismatch test).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from serving.exploration import make_policy

CURRENT = "current"


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    bundle: str = CURRENT
    policy: str = "greedy"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    arms: tuple[Arm, ...]
    salt: str = ""
    name: str = "experiment"
    control: str = ""

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("an experiment needs at least one arm")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if any(a.share <= 0 for a in self.arms):
            raise ValueError("every arm's share must be > 0")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arm shares must sum to 1, got {total:g}")
        if self.control and self.control not in names:
            raise ValueError(f"control arm {self.control!r} is not among the arms {names}")
        for arm in self.arms:
            make_policy(arm.policy, arm.params)  # refuse unknown policies or params at load time

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].name

    @property
    def shares(self) -> dict[str, float]:
        return {a.name: a.share for a in self.arms}

    def assign(self, user_id: str) -> Arm:
        """The user's arm: stable across requests and processes."""
        bounds, total = [], 0.0
        for arm in self.arms:
            total += arm.share
            bounds.append(total)
        index = min(bisect.bisect_right(bounds, bucket(self.salt, user_id)), len(self.arms) - 1)
        return self.arms[index]


def bucket(salt: str, user_id: str) -> float:
    """``sha256("salt:user")`` as a number in [0, 1)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256


def parse_experiment(data: dict, where: str = "experiment config") -> Experiment:
    if not isinstance(data, dict) or not isinstance(data.get("arms"), list):
        raise ValueError(f"{where}: needs an 'arms' list")
    arms = []
    for n, raw in enumerate(data["arms"], start=1):
        if not isinstance(raw, dict) or "name" not in raw or "share" not in raw:
            raise ValueError(f"{where}: arm {n} needs a name and a share")
        unknown = set(raw) - {"name", "share", "bundle", "policy", "params"}
        if unknown:
            raise ValueError(f"{where}: arm {raw['name']!r} has unknown keys {sorted(unknown)}")
        arms.append(Arm(name=str(raw["name"]), share=float(raw["share"]), bundle=str(raw.get("bundle", CURRENT)),
                        policy=str(raw.get("policy", "greedy")), params=dict(raw.get("params") or {})))
    try:
        return Experiment(tuple(arms), salt=str(data.get("salt", "")), name=str(data.get("name", "experiment")),
                          control=str(data.get("control", "")))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_experiment(path: Path) -> Experiment:
    """An experiment from a YAML (``.yaml``/``.yml``) or JSON file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such experiments config")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc.msg}); use .yaml for YAML") from exc
    return parse_experiment(data, str(path))
