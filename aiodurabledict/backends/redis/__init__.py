"""Redis: a hash per dict, a version with its commit token, a change log, and one Lua script per commit.

Works on one server, through Redis Sentinel (a ``Sentinel(...).master_for(...)`` client) and on Redis
Cluster (a ``RedisCluster`` client: the dict lives in one slot, notices use sharded pub/sub). Every
dict on one client shares one subscription connection (one per shard on Redis Cluster).

Modules: ``_backend`` (the backend and the dict), ``_lua`` (the scripts), ``notices`` (the notice
format), ``_hub`` (the shared subscription), ``_topology`` (one server or Cluster), ``url`` (the
``redis://``, ``redis+cluster://`` and ``redis+sentinel://`` opener), ``_redispy`` (redis-py's
habits and errors).
"""

from __future__ import annotations

try:
    import redis  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisDict needs redis-py: pip install 'aiodurabledict[redis]'", name=_exc.name
    ) from _exc

from ._backend import RedisBackend, RedisDict
from .notices import parse_notice

__all__ = ["RedisBackend", "RedisDict", "parse_notice"]
