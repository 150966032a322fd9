"""The shared servers that ``scripts/servers.sh`` runs, found through the ``AIODURABLEDICT_*`` variables.

The single servers have defaults (Redis on 127.0.0.1:6379, ...). The multi-node engines (a Redis
Cluster, a Redis Sentinel set, a ZooKeeper ensemble) have none: their tests run only where
``scripts/servers.sh env`` set their variable, and skip elsewhere (or fail, where servers are required).
"""

from __future__ import annotations

import os

from tests.servers._base import HOST, answers, unavailable

REDIS_CLUSTER_ENV = "AIODURABLEDICT_REDIS_CLUSTER"
REDIS_SENTINEL_ENV = "AIODURABLEDICT_REDIS_SENTINEL"
REDIS_SENTINEL_SERVICE_ENV = "AIODURABLEDICT_REDIS_SENTINEL_SERVICE"
ZOOKEEPER_ENSEMBLE_ENV = "AIODURABLEDICT_ZOOKEEPER_ENSEMBLE"


def redis_url() -> str:
    """URL of the shared Redis server."""
    return os.environ.get("AIODURABLEDICT_REDIS_URL") or f"redis://{HOST}:6379/0"


def zookeeper_address() -> str:
    """``host:port`` of the shared ZooKeeper server."""
    return os.environ.get("AIODURABLEDICT_ZOOKEEPER") or f"{HOST}:2181"


def postgres_url() -> str:
    """URL of the shared PostgreSQL database."""
    return os.environ.get("AIODURABLEDICT_POSTGRES_URL") or f"postgres://postgres@{HOST}:5432/test"


def memcached_address() -> str:
    """``host:port`` of the shared memcached server."""
    return os.environ.get("AIODURABLEDICT_MEMCACHED") or f"{HOST}:11211"


def _require(what: str, address: str) -> str:
    if not answers(address):
        unavailable(f"{what} does not answer at {address}")
    return address


def require_redis() -> str:
    """The shared Redis URL; skips (or fails, in CI) when nothing answers there."""
    return _require("Redis", redis_url())


def require_zookeeper() -> str:
    """The shared ZooKeeper address; skips (or fails, in CI) when nothing answers there."""
    return _require("ZooKeeper", zookeeper_address())


def require_postgres() -> str:
    """The shared PostgreSQL URL; skips (or fails, in CI) when nothing answers there."""
    return _require("PostgreSQL", postgres_url())


def require_memcached() -> str:
    """The shared memcached address; skips (or fails, in CI) when nothing answers there."""
    return _require("memcached", memcached_address())


def _require_all(what: str, variable: str) -> list[str]:
    """The addresses listed in ``variable``, every one of which must answer."""
    addresses = [a.strip() for a in os.environ.get(variable, "").split(",") if a.strip()]
    if not addresses:
        unavailable(
            f'{what}: {variable} is not set (scripts/servers.sh start; eval "$(scripts/servers.sh env)")'
        )
    silent = [address for address in addresses if not answers(address)]
    if silent:
        unavailable(f"{what} does not answer at {', '.join(silent)} ({variable})")
    return addresses


def require_redis_cluster() -> list[str]:
    """The shared Redis Cluster's node addresses (``host:port``); skips (or fails, in CI) when
    AIODURABLEDICT_REDIS_CLUSTER is unset or a node does not answer."""
    return _require_all("Redis Cluster", REDIS_CLUSTER_ENV)


def require_redis_sentinel() -> tuple[list[str], str]:
    """The shared sentinels' addresses and the name of the service they watch; skips (or fails, in
    CI) when AIODURABLEDICT_REDIS_SENTINEL is unset or a sentinel does not answer."""
    sentinels = _require_all("Redis Sentinel", REDIS_SENTINEL_ENV)
    return sentinels, os.environ.get(REDIS_SENTINEL_SERVICE_ENV) or "mymaster"


def require_zookeeper_ensemble() -> str:
    """The shared ZooKeeper ensemble's connect string (``h:p,h:p,h:p``); skips (or fails, in CI)
    when AIODURABLEDICT_ZOOKEEPER_ENSEMBLE is unset or a node does not answer."""
    return ",".join(_require_all("ZooKeeper ensemble", ZOOKEEPER_ENSEMBLE_ENV))
