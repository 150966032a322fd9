"""The tables ``ModelDict`` keeps beside the data, under the module path that Tortoise apps name
(``modules={"models": ["myapp.models", "aiodurabledict.backends.tortoise_models"]}``); they are
defined in ``aiodurabledict.backends.tortoise.models``."""

from __future__ import annotations

from .tortoise.models import DictChange, DictVersion, DurableEntry

__all__ = ["DictChange", "DictVersion", "DurableEntry"]

# What Tortoise's app discovery registers from this module.
__models__ = [DictVersion, DictChange, DurableEntry]
