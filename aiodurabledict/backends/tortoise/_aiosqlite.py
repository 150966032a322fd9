"""Working around aiosqlite: a statement cancelled in Python still runs later in aiosqlite's thread,
and that thread may be inside SQLite when the process forks."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dialect import Session

__all__ = ["ForkGate", "fork_gate", "queue_rollback"]

log: logging.Logger = logging.getLogger("aiodurabledict")


async def queue_rollback(session: Session) -> None:
    """Never leave the application's connection inside our transaction, and never wait for it.

    aiosqlite runs statements in order in its thread. Cancelled while ``BEGIN IMMEDIATE`` still waits
    there for another process's lock, the BEGIN completes later; a ROLLBACK queued behind it undoes
    it then, before any statement queued after (the application's own included).
    """
    task = asyncio.ensure_future(session.execute("ROLLBACK", ()))
    # "No transaction is active" (the BEGIN failed) is the expected answer, not an error.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    # One turn of the loop: the task queues its ROLLBACK before anyone can take the connection.
    await asyncio.sleep(0)


class ForkGate:
    """Keeps ``fork()`` out of the dicts' SQLite calls.

    aiosqlite runs SQLite in a thread of its own, and SQLite takes process-wide mutexes (its
    allocator's, its file locks') while it works. A process forked at that moment inherits them
    locked, with no thread left to unlock them: the child's first SQLite call waits forever. That
    happens under gunicorn's ``--preload``: the watcher checks the store just after ``open()``, as
    the master forks its workers. The gate counts the dicts' SQLite sessions in flight; before a fork
    it holds new ones back and waits (at most ``wait`` seconds) for those in flight to end. Sessions
    of the loop the forking thread runs cannot end meanwhile, and are not waited for.
    """

    def __init__(self, wait: float = 2.0) -> None:
        self.wait = wait
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._busy: dict[asyncio.AbstractEventLoop, int] = {}
        self._forking = False
        self._held: list[asyncio.Future[None]] = []

    @asynccontextmanager
    async def passage(self) -> AsyncIterator[None]:
        """Counted as in flight for the block; waits first while a fork is underway."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if not self._forking:
                    self._busy[loop] = self._busy.get(loop, 0) + 1
                    break
                held: asyncio.Future[None] = loop.create_future()
                self._held.append(held)
            await held
        try:
            yield
        finally:
            with self._cond:
                left = self._busy[loop] - 1
                if left:
                    self._busy[loop] = left
                else:
                    del self._busy[loop]
                self._cond.notify_all()

    def before_fork(self) -> None:
        """Hold new sessions back; wait for those of other loops to end."""
        try:
            own: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            own = None
        with self._cond:
            self._forking = True
            ended = self._cond.wait_for(lambda: not any(loop is not own for loop in self._busy), self.wait)
        if not ended:
            log.warning(
                "the process forks while a dict's SQLite statement still runs after %g s: the child "
                "may hang at its first SQLite call",
                self.wait,
            )

    def after_fork_in_parent(self) -> None:
        """Let the sessions held back go."""
        with self._cond:
            self._forking = False
            held, self._held = self._held, []
        for future in held:
            loop = future.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_release, future)

    def after_fork_in_child(self) -> None:
        """Start afresh: the parent's sessions, loops and threads are not the child's."""
        self._reset()


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


fork_gate = ForkGate()
os.register_at_fork(
    before=fork_gate.before_fork,
    after_in_parent=fork_gate.after_fork_in_parent,
    after_in_child=fork_gate.after_fork_in_child,
)
