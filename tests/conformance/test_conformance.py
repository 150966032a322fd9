"""The whole contract, run against every store that ``tests/stores`` lists."""

from aiodurabledict.testing.conformance import DictConformance


class TestConformance(DictConformance):
    """Each test runs once per store (see the ``factory`` fixture in tests/conftest.py)."""
