"""Settings of every entry point, from the environment (prefix ``RECSYS_``) through pydantic-settings.

The CLI, the API and the docker-compose file all configure the system through these variables,
so one table (the README's) describes every deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    n_candidates: int = 300
    host: str = "127.0.0.1"
    port: int = 8000

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
