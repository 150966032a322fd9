"""The tables ``ModelDict`` keeps beside the data, under the module path that Tortoise apps name
(``modules={"models": ["myapp.models", "aiodurabledict.backends.tortoise_models"]}``); they are
defined in ``aiodurabledict.backends.tortoise.models``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .tortoise.models import DictChange, DictVersion, DurableEntry

if TYPE_CHECKING:
    from tortoise.models import Model

__all__ = ["DictChange", "DictVersion", "DurableEntry"]

# What Tortoise's app discovery registers from this module.
__models__: list[type[Model]] = [DictVersion, DictChange, DurableEntry]
