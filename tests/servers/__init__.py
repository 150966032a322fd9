"""Real servers for the tests: the shared servers' addresses, and private instances.

The shared servers (Redis, PostgreSQL, ZooKeeper, memcached, MariaDB, and the multi-node engines
on loopback) are found through the ``AIODURABLEDICT_*`` environment variables (``shared``). Fault
tests start PRIVATE servers instead, on free loopback ports, in temporary folders, as child
processes they own: they can stop, kill, freeze and restart them without disturbing anybody else.
Every private server is killed by pid when its test ends (fixtures), when its ``with`` block ends,
and, as a last resort, when the interpreter exits.

- ``single``: ``RedisServer``, ``MemcachedServer``, ``ZookeeperServer``, ``PostgresServer``.

Fixtures (import them into a conftest): ``redis_server``, ``zookeeper_server``, ``memcached_server``
and ``postgres_server`` are factories; each call starts one more server and returns it.
"""

from tests.servers._base import (
    REQUIRE_SERVERS_ENV,
    Server,
    ServerError,
    ServerExited,
    answers,
    free_port,
    free_ports,
    host_port,
    unavailable,
    wait_for,
)
from tests.servers._group import ServerGroup
from tests.servers.shared import (
    memcached_address,
    postgres_url,
    redis_url,
    require_memcached,
    require_postgres,
    require_redis,
    require_redis_cluster,
    require_redis_sentinel,
    require_zookeeper,
    require_zookeeper_ensemble,
    zookeeper_address,
)
from tests.servers.single import (
    MemcachedServer,
    PostgresServer,
    RedisServer,
    ZookeeperServer,
    memcached_server,
    postgres_server,
    redis_server,
    zookeeper_server,
)

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "MemcachedServer",
    "PostgresServer",
    "RedisServer",
    "Server",
    "ServerError",
    "ServerExited",
    "ServerGroup",
    "ZookeeperServer",
    "answers",
    "free_port",
    "free_ports",
    "host_port",
    "memcached_address",
    "memcached_server",
    "postgres_server",
    "postgres_url",
    "redis_server",
    "redis_url",
    "require_memcached",
    "require_postgres",
    "require_redis",
    "require_redis_cluster",
    "require_redis_sentinel",
    "require_zookeeper",
    "require_zookeeper_ensemble",
    "unavailable",
    "wait_for",
    "zookeeper_address",
    "zookeeper_server",
]
