"""Working around aiosqlite: a statement cancelled in Python still runs later in aiosqlite's thread."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dialect import Session

__all__ = ["queue_rollback"]


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
