"""Everything we add to aiozk 0.32 or work around in it, in one place for the next upgrade to check.

- ``multiread``: ZooKeeper's ``multiRead`` (3.6+), which aiozk lacks (older servers: pipelined gets).
- ``requests``: one request, writes never resent. aiozk resends a request whose connection broke,
  so a write that committed before the break commits again later, over what others wrote meanwhile.
  ``request_size``: what a transaction weighs (the server drops a connection over ``jute.maxbuffer``).
- ``session``: ``harden``, once per client instance (never on aiozk's classes): a read loop that
  ends counts as a lost connection (aiozk ends it silently on a closed socket and stays "connected"
  until a ping times out: the whole session timeout after a leader dies), and ends on cancellation
  (aiozk's can swallow one: ``asyncio.run()`` then hangs at exit); servers are searched again at
  once, with a short jittered backoff and a bounded connect (aiozk waits 4 s, then 8 s..., its
  handshake may wait forever on a frozen server, and one failing oddly ended its repair loop for
  good); SetWatches is sent once, never through ``Session.send`` (which waited, inside the repair
  loop, for a connection only that loop could make); credentials are replayed on every new
  connection (aiozk forgets an ``AuthRequest`` made by hand); a standalone server is told apart (no
  sync needed). ``close_client``: aiozk's ``close()`` leaves its tasks behind when the server is gone.
"""

from .multiread import OP_GET_CHILDREN, OP_GET_DATA, MultiRead, ReadResult, read_many
from .requests import ConnectionLostError, request, request_size
from .session import add_auth, close_client, harden, learn_mode

__all__ = [
    "OP_GET_CHILDREN",
    "OP_GET_DATA",
    "ConnectionLostError",
    "MultiRead",
    "ReadResult",
    "add_auth",
    "close_client",
    "harden",
    "learn_mode",
    "read_many",
    "request",
    "request_size",
]
