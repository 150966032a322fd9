"""``zookeeper://`` URLs: server lists (ensembles), digest credentials, the store's own options."""

from __future__ import annotations

import uuid

import pytest

from aiodurabledict import open_dict
from aiodurabledict.backends.zookeeper import Credentials, ZookeeperBackend
from tests.servers import require_zookeeper_ensemble
from tests.stores.zookeeper import zookeeper_znode


def backend_of(url: str) -> ZookeeperBackend:
    backend = open_dict(url).backend
    assert isinstance(backend, ZookeeperBackend)
    return backend


def test_a_url_takes_a_list_of_servers_credentials_and_options() -> None:
    """Servers, percent-encoded credentials and the store's options reach the client and the backend
    (no I/O); the password shows nowhere."""
    url = "zookeeper://alice:p%40ss%3Aw@h1:2181,h2:2182,[::1]:2183/app/settings?session_timeout=4&log_keep=32"
    backend = backend_of(url)
    assert backend.path == "/app/settings"
    assert backend.credentials == Credentials("alice", "p@ss:w")
    assert [(h, int(p)) for h, p in backend.client.session.hosts] == [
        ("h1", 2181),
        ("h2", 2182),
        ("::1", 2183),
    ]
    assert backend.client.session.timeout == 4
    assert "p@ss" not in repr(backend)
    assert "p@ss" not in repr(open_dict(url))


def test_the_keyspace_option_names_the_node_when_the_path_does_not() -> None:
    """Without a path the node is ``/<keyspace>`` (default ``/default``)."""
    assert backend_of("zookeeper://h:2181?keyspace=app/flags").path == "/app/flags"
    assert backend_of("zookeeper://h:2181").path == "/default"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("zookeeper://u@host:2181/app", "credentials are user:password@"),
        ("zookeeper://:pw@host:2181/app", "credentials are user:password@"),
        ("zookeeper://host:2181,/app", None),
        ("zookeeper://host:2181,other/app", "expected host:port"),
        ("zookeeper://host:99999/app", "malformed store URL"),
        ("zookeeper://host:1,host:99999/app", "expected host:port"),
        ("zookeeper://host:2181/app?log_keep=0", "option 'log_keep'"),
    ],
)
def test_bad_urls(url: str, message: str | None) -> None:
    """A malformed server list or credentials is a ValueError saying which (passwords masked)."""
    if message is None:
        assert backend_of(url).client.session.hosts == [("host", "2181")]
        return
    with pytest.raises(ValueError, match=message) as info:
        open_dict(url)
    assert "pw@" not in str(info.value)


@pytest.mark.zookeeper
async def test_an_ensemble_url_opens_a_dict_on_every_server() -> None:
    """``zookeeper://h1:p1,h2:p2,h3:p3/path`` opens a dict whose client may use any of them."""
    servers = require_zookeeper_ensemble()
    async with zookeeper_znode(servers) as (path, _clients):
        async with (
            open_dict(f"zookeeper://{servers}{path}") as a,
            open_dict(f"zookeeper://{servers}{path}") as b,
        ):
            await a.set("k", 1)
            await b.sync()
            assert b == {"k": 1}
            assert len(a.backend.client.session.hosts) == 3  # type: ignore[attr-defined]
        async with open_dict(f"zookeeper://{servers.split(',')[-1]}{path}?watch=false") as c:
            assert c == {"k": 1}


def test_hosts_are_ports_checked() -> None:
    """Every server of the list needs a numeric port."""
    with pytest.raises(ValueError, match="expected host:port"):
        open_dict(f"zookeeper://h:1,h:x/{uuid.uuid4().hex}")
