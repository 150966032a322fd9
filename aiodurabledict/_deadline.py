"""Time limits for store calls with one timer for all of them.

``asyncio.timeout`` schedules (and cancels) a timer per call: about as much work as a cached read
of the store itself on a fast path. ``Deadlines`` keeps the calls in flight with their deadlines and
one timer set for the earliest; it cancels the tasks whose deadline passed, and ``Call`` turns that
cancellation into ``TimeoutError`` for the caller, as ``asyncio.timeout`` would.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["Call", "Deadlines"]


class Deadlines:
    """The deadlines of the calls in flight on one event loop, and the one timer that enforces them."""

    __slots__ = ("_calls", "_expired", "_loop", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._calls: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __call__(self, timeout: float) -> Call:
        """A context manager bounding the enclosed awaits of the current task to ``timeout`` seconds."""
        return Call(self, timeout)

    def enter(self, task: asyncio.Task[object], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._timer, self._timer_at = loop, None, math.inf
        deadline = loop.time() + timeout
        self._calls[task] = deadline
        if deadline < self._timer_at:
            self._arm(loop, deadline)

    def leave(self, task: asyncio.Task[object]) -> bool:
        """Forget ``task``'s call; ``True`` when it was cancelled because its deadline passed."""
        self._calls.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        earliest = math.inf
        for task, deadline in list(self._calls.items()):
            if deadline <= now:
                del self._calls[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()
            else:
                earliest = min(earliest, deadline)
        if earliest < math.inf:
            self._arm(loop, earliest)


class Call:
    """``async with deadlines(timeout):``: the body's awaits end with ``TimeoutError`` when ``timeout``
    seconds pass; other cancellations pass through untouched."""

    __slots__ = ("_deadlines", "_task", "_timeout")

    def __init__(self, deadlines: Deadlines, timeout: float) -> None:
        self._deadlines = deadlines
        self._timeout = timeout
        self._task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a task")
        self._task = task
        self._deadlines.enter(task, self._timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        assert task is not None
        if not self._deadlines.leave(task):
            return
        # We cancelled the task: take our request back.
        if task.uncancel() > 0:
            return  # somebody else cancelled it too: theirs goes on
        if exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
        if exc_type is None:
            # The call finished just as its time ran out: our cancellation is still on its way to
            # the task (Python < 3.13 keeps it after uncancel()); receive it here, harmlessly.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if task.cancelling() > 0:
                    raise
