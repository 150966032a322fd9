"""Real servers for the tests: the shared servers' addresses, and private instances.

The shared servers (Redis, PostgreSQL, ZooKeeper, memcached, MariaDB, and the multi-node engines
on loopback) are found through the ``AIODURABLEDICT_*`` environment variables (``shared``). Fault
tests start PRIVATE servers instead, on free loopback ports, in temporary folders, as child
processes they own: they can stop, kill, freeze and restart them without disturbing anybody else.
Every private server is killed by pid when its test ends (fixtures), when its ``with`` block ends,
and, as a last resort, when the interpreter exits.

- ``single``: ``RedisServer``, ``MemcachedServer``, ``ZookeeperServer``, ``PostgresServer``;
- ``redis_cluster``: ``RedisClusterServers`` (masters and replicas in one Redis Cluster);
- ``sentinel``: ``RedisSentinelSet`` (a master, its replica and three sentinels);
- ``zookeeper``: ``ZookeeperEnsemble`` (three ZooKeeper peers).

Fixtures (import them into a conftest): ``redis_server``, ``zookeeper_server``, ``memcached_server``,
``postgres_server``, ``redis_cluster_servers``, ``redis_sentinel_set`` and ``zookeeper_ensemble`` are
factories; each call starts one more server (or group) and returns it.
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
from tests.servers.redis_cluster import RedisClusterNode, RedisClusterServers, redis_cluster_servers
from tests.servers.sentinel import RedisSentinelSet, SentinelDataNode, SentinelNode, redis_sentinel_set
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
from tests.servers.zookeeper import ZookeeperEnsemble, ZookeeperPeer, zookeeper_ensemble

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "MemcachedServer",
    "PostgresServer",
    "RedisClusterNode",
    "RedisClusterServers",
    "RedisSentinelSet",
    "RedisServer",
    "SentinelDataNode",
    "SentinelNode",
    "Server",
    "ServerError",
    "ServerExited",
    "ServerGroup",
    "ZookeeperEnsemble",
    "ZookeeperPeer",
    "ZookeeperServer",
    "answers",
    "free_port",
    "free_ports",
    "host_port",
    "memcached_address",
    "memcached_server",
    "postgres_server",
    "postgres_url",
    "redis_cluster_servers",
    "redis_sentinel_set",
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
    "zookeeper_ensemble",
    "zookeeper_server",
]
