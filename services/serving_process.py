"""Entry module of a serving process: import this (not ``services.api``) first in a server process.

Feast 0.67 imports torch eagerly whenever it is installed (``feast/torch_wrapper.py``), which would
put a training framework (seconds of start-up, hundreds of MB) into every API worker. An import
hook that refuses torch, installed before Feast is first imported, makes Feast record torch as
unavailable; the serving path itself never uses it. In a process that already imported torch
(a test session, say) the hook changes nothing.
"""

import importlib.abc
import sys


class _RefuseTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("torch is kept out of serving processes", name=name)
        return None


if "torch" not in sys.modules:
    sys.meta_path.insert(0, _RefuseTorch())

from fastapi import FastAPI  # noqa: E402

from services.api import create_app  # noqa: E402
from services.settings import Settings  # noqa: E402


def app_from_environment() -> FastAPI:
    """The app configured by the RECSYS_* variables: what each uvicorn worker process builds."""
    return create_app(Settings())


__all__ = ["app_from_environment", "create_app"]
