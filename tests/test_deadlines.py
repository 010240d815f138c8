"""handlers.deadlines: one timer for many awaits' deadlines (pure asyncio, no bus)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from handlers.deadlines import Deadlines


async def _guarded(
    deadlines: Deadlines,
    limit: float,
    work: Callable[[], Awaitable[object]],
    *,
    block_for: float = 0.0,
) -> str:
    """What SystemdBus.call does around its await: 'ok', 'timed out' or the cancel raised.

    ``block_for`` blocks the loop first, past a short deadline and anything else
    due, so that all of it fires in one loop iteration before the await resumes.
    """
    key = deadlines.add(limit)
    if block_for:
        time.sleep(block_for)  # noqa: ASYNC251 - deliberately blocking, see above
        await asyncio.sleep(0)
    try:
        await work()
    except asyncio.CancelledError:
        if deadlines.timed_out(key):
            return "timed out"
        raise
    finally:
        deadlines.discard(key)
    return "ok"


def _forever() -> Awaitable[object]:
    return asyncio.get_running_loop().create_future()


async def _wait_forever(deadlines: Deadlines, limit: float) -> str:
    return await _guarded(deadlines, limit, _forever)


@pytest.mark.asyncio
async def test_an_await_past_its_deadline_is_cancelled_and_reported() -> None:
    deadlines = Deadlines()
    started = time.monotonic()
    assert await _wait_forever(deadlines, 0.1) == "timed out"
    took = time.monotonic() - started
    assert 0.1 <= took < 0.5, took
    assert len(deadlines) == 0 and not deadlines.armed  # nothing left behind


@pytest.mark.asyncio
async def test_the_task_is_not_left_cancelling_after_a_timeout() -> None:
    deadlines = Deadlines()
    assert await _wait_forever(deadlines, 0.05) == "timed out"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the task can still await: the cancel was undone


@pytest.mark.asyncio
async def test_an_outside_cancel_still_cancels() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_wait_forever(deadlines, 10.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0 and not deadlines.armed


@pytest.mark.asyncio
async def test_an_outside_cancel_at_the_deadline_is_not_swallowed() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_guarded(deadlines, 0.05, _forever, block_for=0.1))
    asyncio.get_running_loop().call_later(0.06, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_a_shorter_deadline_is_not_held_back_by_a_longer_one() -> None:
    deadlines = Deadlines()
    long = asyncio.create_task(_wait_forever(deadlines, 30.0))
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await _wait_forever(deadlines, 0.05) == "timed out"
    assert time.monotonic() - started < 0.5
    assert deadlines.armed  # the long one is still in flight
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    assert not deadlines.armed  # idle: no timer at all


@pytest.mark.asyncio
async def test_awaits_that_finish_in_time_are_never_cancelled() -> None:
    deadlines = Deadlines()

    def work(n: int) -> Callable[[], Awaitable[object]]:
        return lambda: asyncio.sleep(0.001 * (n % 5))

    # Many in flight at once, then past all their deadlines: none was cancelled.
    results = await asyncio.gather(*(_guarded(deadlines, 0.2, work(n)) for n in range(200)))
    assert results == ["ok"] * 200
    await asyncio.sleep(0.3)
    assert len(deadlines) == 0 and not deadlines.armed


@pytest.mark.asyncio
async def test_of_many_in_flight_only_the_late_ones_time_out() -> None:
    deadlines = Deadlines()

    def one(limit: float, work: float) -> Awaitable[str]:
        return _guarded(deadlines, limit, lambda: asyncio.sleep(work))

    results = await asyncio.gather(
        *(one(0.1, 0.0), one(0.1, 1.0), one(0.3, 0.2), one(0.05, 1.0), one(5.0, 0.15))
    )
    assert results == ["ok", "timed out", "ok", "timed out", "ok"]


def test_add_outside_a_task_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        Deadlines().add(1.0)


@pytest.mark.asyncio
async def test_add_from_a_plain_callback_is_refused() -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            Deadlines().add(1.0)
        except RuntimeError as exc:
            outcome.set_result(exc)

    loop.call_soon(callback)
    assert "from a task" in str(await outcome)
