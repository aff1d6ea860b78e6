"""Settings of every entry point, from the environment (prefix ``RECSYS_``) through pydantic-settings.

The CLI, the API and the docker-compose file all configure the system through these variables,
so one table (the README's) describes every deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.exploration import make_policy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_")

    # Work directory: data, feature store files, bundles and logs.
    home: Path = Path("recsys-work")
    # Feature store profile: "embedded" (SQLite online store) or "redis".
    profile: Literal["embedded", "redis"] = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Feast project name; Redis keys are namespaced by it.
    project: str = "recsys"
    # Bundle to serve; empty means the newest in the work directory.
    bundle: Path | None = None
    # "data": the serving clock starts at the end of the bundle's data and runs in real time
    # (simulated and historical data); "wall": the machine's clock (live traffic).
    clock: Literal["data", "wall"] = "data"
    # Bearer token for /admin endpoints; empty disables them (401).
    admin_token: str = ""
    n_candidates: int = 350
    # Per-stage budgets (serving/deadline.py, serving/store_guard.py): a stage that overruns falls
    # back (defaults, popularity, retrieval order) and the answer is marked degraded. The store's is
    # the socket timeout of each Redis read a request makes (two per request). A failing store is
    # left alone for store_retry_after_s before it is tried again.
    store_timeout_ms: float = Field(20.0, gt=0)
    store_retry_after_s: float = Field(1.0, gt=0)
    retrieval_budget_ms: float = Field(20.0, gt=0)
    ranking_budget_ms: float = Field(20.0, gt=0)
    # A request not answered within this (queueing included) gets the popularity fallback from the
    # event loop; at least the stage budgets above summed, so it only catches a stage that never ends.
    request_deadline_ms: float = Field(100.0, gt=0)
    # Exploration policy (serving/exploration.py: greedy, epsilon_greedy, softmax, thompson, squarecb)
    # and its params as JSON, e.g. RECSYS_POLICY=softmax RECSYS_POLICY_PARAMS='{"temperature": 0.3}'.
    policy: str = "greedy"
    policy_params: dict = {}
    # Top-M ranked candidates (ids and scores) written to every impression, for off-policy evaluation.
    log_candidates: int = 50
    # A/B experiment config (YAML or JSON: arms, shares, salt; serving/experiments.py); unset: no experiment.
    experiments: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # API worker processes (each with its own model copy, caches and one native thread per library).
    workers: int = Field(1, ge=1, le=64)
    # Threads per worker that run /recommend requests (never the event loop; docs/performance.md).
    request_threads: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _check_policy(self) -> Settings:
        """Refuse an unknown policy, bad params or too few logged candidates at startup, not per request."""
        policy = make_policy(self.policy, self.policy_params)
        needed = getattr(policy, "protected", 0) + getattr(policy, "pool", 0)
        if self.log_candidates < needed:
            raise ValueError(f"log_candidates ({self.log_candidates}) must cover the policy's protected + pool "
                             f"candidates ({needed}), or its propensities cannot be recomputed from the logs")
        return self

    @model_validator(mode="after")
    def _check_request_deadline(self) -> Settings:
        stages = 2 * self.store_timeout_ms + self.retrieval_budget_ms + self.ranking_budget_ms
        if self.request_deadline_ms < stages:
            raise ValueError(f"request_deadline_ms ({self.request_deadline_ms:g}) must be at least the stage budgets "
                             f"summed (2 x store_timeout_ms + retrieval_budget_ms + ranking_budget_ms = {stages:g})")
        return self

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"
