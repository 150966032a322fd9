"""Time limits of store calls: one timer for every call in flight, the semantics of asyncio.timeout."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aiodurabledict._deadline import Deadlines


async def test_a_call_past_its_deadline_raises_timeout_error() -> None:
    """The body is cancelled when its time is up, and the caller sees TimeoutError."""
    deadlines = Deadlines()
    with pytest.raises(TimeoutError):
        async with deadlines(0.02):
            await asyncio.sleep(10)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_calls_expire_each_at_its_own_deadline() -> None:
    """Concurrent calls with different limits end in the order of their deadlines; the quick ones
    that finish in time are untouched."""
    deadlines = Deadlines()
    ended: list[str] = []

    async def call(name: str, limit: float, work: float) -> None:
        try:
            async with deadlines(limit):
                await asyncio.sleep(work)
            ended.append(f"{name} done")
        except TimeoutError:
            ended.append(f"{name} timed out")

    await asyncio.gather(call("a", 0.15, 10), call("b", 0.05, 10), call("c", 1.0, 0.01), call("d", 0.1, 10))
    assert ended == ["c done", "b timed out", "d timed out", "a timed out"]


async def test_an_outside_cancellation_is_not_a_timeout() -> None:
    """Cancelling the task from outside gives CancelledError, as always."""
    deadlines = Deadlines()

    async def call() -> None:
        async with deadlines(10):
            await asyncio.sleep(10)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_call_that_ends_as_its_time_runs_out_leaves_no_cancellation_behind() -> None:
    """When the timer fires after the awaited result arrived but before the task resumed, the call
    succeeds and the task's next await is not cancelled."""
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()

    async def racing() -> str:
        future: asyncio.Future[str] = loop.create_future()
        async with deadlines(0.05):
            # The result and the deadline land in the same turn of the loop.
            loop.call_at(loop.time() + 0.05, future.set_result, "value")
            result = await future
        await asyncio.sleep(0.01)  # would raise CancelledError if a request were left behind
        return result

    for _ in range(20):
        # The deadline may win a round (TimeoutError): also correct. What may not happen is a
        # CancelledError from the sleep after a successful call.
        with contextlib.suppress(TimeoutError):
            assert await racing() == "value"
