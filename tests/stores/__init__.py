"""Each store's conformance params, one module a store (``PARAMS``); ``params()`` collects them all."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["params"]


def params() -> list[Any]:
    """Every store module's ``PARAMS``, modules in name order."""
    found: list[Any] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "PARAMS", []))
    return found
