"""Tools for testing applications that use aiodurabledict, and for testing stores against the contract.

``MemoryStore`` has switches to drop notices, fail and freeze, so that an application's handling of
outages can be tested without a server. ``aiodurabledict.testing.conformance`` holds the contract as a
pytest suite (it imports pytest, so it is not imported here).
"""

from ..backends.memory import MemoryBackend, MemoryDict, MemoryStore, MemoryStoreError

__all__ = ["MemoryBackend", "MemoryDict", "MemoryStore", "MemoryStoreError"]
