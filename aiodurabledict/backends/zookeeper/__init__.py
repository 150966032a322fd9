"""ZooKeeper: one znode per key under the dict's node, a stamp on that node, and a short change log.

Every write is one ``multi`` transaction: the key nodes' operations, a ``set`` of the dict's node
(the stamp: the commit's token, the commit before it, the names it changed) and a new log entry. So
one read of the stamp tells whether anything changed since a version, and usually what. Versions are
ZooKeeper's zxids, comparable across processes; tokens tell a restored server's history from the one
a cache followed. Notices follow the dict's node with one data watch used as a doorbell. Writers must
go through this package (or stamp and log the same way) to be seen.

Modules: ``layout`` (node names, stamp and log formats), ``tree`` (the node on one client),
``reads``, ``writes``, ``notices``, ``auth`` (digest credentials and ACLs), ``url`` (the
``zookeeper://`` opener), ``backend`` (the ``Backend`` protocol and ``ZookeeperDict``), and
``_aiozk`` (everything we add to aiozk or work around in it).
"""

from __future__ import annotations

try:
    import aiozk  # noqa: F401 - fail here, with the extra to install, when aiozk is missing
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ZookeeperDict needs aiozk: pip install 'aiodurabledict[zookeeper]'", name=exc.name
    ) from exc

from ._aiozk import close_client
from .auth import Credentials
from .backend import ZookeeperBackend, ZookeeperDict
from .layout import MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_VALUE_BYTES, escape_key, unescape_key

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_VALUE_BYTES",
    "Credentials",
    "ZookeeperBackend",
    "ZookeeperDict",
    "close_client",
    "escape_key",
    "unescape_key",
]
