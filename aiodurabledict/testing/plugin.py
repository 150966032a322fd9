"""pytest fixtures for applications' tests (registered as a pytest plugin when the package is installed).

- ``memory_stores``: every ``memory://NAME`` store starts empty for the test and is forgotten after it,
  so that tests sharing names do not leak into each other.
- ``memory_url``: a fresh ``memory://`` URL, unique to the test (uses ``memory_stores``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from . import reset_memory_stores

__all__ = ["memory_stores", "memory_url"]


@pytest.fixture
def memory_stores() -> Iterator[None]:
    """Forget every ``memory://`` store before and after the test."""
    reset_memory_stores()
    yield
    reset_memory_stores()


@pytest.fixture
def memory_url(memory_stores: None) -> str:
    """A ``memory://`` URL no other test uses; give it to ``open_dict`` in place of the real store's."""
    return f"memory://test-{uuid.uuid4().hex}"
