"""The listener's coalescing queue, on its own (the listener's use of it: test_listener.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from handlers.unitqueue import UnitQueue


class Owner:
    """What the listener gives the queue: a handler, a task set, the two callbacks."""

    def __init__(self, *, max_pending: int = 8) -> None:
        self.handled: list[tuple[str, set[str]]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.dropped = 0
        self.drained = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.progress = asyncio.Condition()
        self.queue = UnitQueue(
            self.handle,
            max_pending=max_pending,
            spawn=self.spawn,
            on_drop=self.on_drop,
            on_drained=self.on_drained,
        )

    async def handle(self, unit: str, reasons: set[str]) -> None:
        self.handled.append((unit, set(reasons)))
        async with self.progress:
            self.progress.notify_all()
        gate = self.gates.get(unit)
        if gate is not None:
            await gate.wait()

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def on_drop(self) -> None:
        self.dropped += 1

    def on_drained(self) -> None:
        self.drained += 1

    async def handled_units(self, n: int) -> list[str]:
        """The first ``n`` units handled, once there are that many (5 s deadline)."""
        async with asyncio.timeout(5), self.progress:
            await self.progress.wait_for(lambda: len(self.handled) >= n)
        return [u for u, _ in self.handled[:n]]

    async def settle(self) -> None:
        for _ in range(50):  # the workers finish what they took: no I/O, only hand-offs
            await asyncio.sleep(0)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_reasons_for_a_waiting_unit_coalesce_into_one_entry() -> None:
    owner = Owner()
    for reason in ("failed", "job", "failed", "health"):
        owner.queue.put("a.service", reason)
    owner.queue.put("b.service", "failed")
    assert owner.queue.pending() == 2
    assert owner.queue.coalesced == 3
    owner.spawn(owner.queue.worker(), "w")
    await owner.settle()
    assert owner.handled == [("a.service", {"failed", "job", "health"}), ("b.service", {"failed"})]
    await owner.close()


@pytest.mark.asyncio
async def test_a_unit_busy_in_one_worker_is_handled_again_once_not_by_a_second_worker() -> None:
    owner = Owner()
    gate = owner.gates["a.service"] = asyncio.Event()
    for i in range(2):
        owner.spawn(owner.queue.worker(), f"w{i}")
    owner.queue.put("a.service", "failed")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert owner.handled == [("a.service", {"failed"})]
    owner.queue.put("a.service", "job")
    owner.queue.put("a.service", "health")
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(owner.handled) == 1  # the second worker did not take it meanwhile
    gate.set()
    await owner.settle()
    assert owner.handled == [("a.service", {"failed"}), ("a.service", {"job", "health"})]
    await owner.close()


@pytest.mark.asyncio
async def test_a_full_queue_drops_counts_and_asks_for_one_reconcile_once_drained() -> None:
    owner = Owner(max_pending=2)
    for i in range(5):
        owner.queue.put(f"u{i}.service", "failed")
    assert (owner.queue.pending(), owner.queue.dropped, owner.dropped) == (2, 3, 3)
    assert owner.queue.resync and owner.drained == 0
    owner.spawn(owner.queue.worker(), "w")
    await owner.settle()
    assert [u for u, _ in owner.handled] == ["u0.service", "u1.service"]
    assert owner.drained == 1 and not owner.queue.resync
    await owner.close()


@pytest.mark.asyncio
async def test_deferred_reasons_are_taken_again_by_the_same_worker() -> None:
    owner = Owner()
    calls = 0

    async def handle(unit: str, reasons: set[str]) -> None:
        nonlocal calls
        calls += 1
        owner.handled.append((unit, set(reasons)))
        if calls == 1:
            owner.queue.defer(unit, reasons | {"later"})

    owner.queue._handle = handle  # type: ignore[method-assign]
    owner.queue.put("a.service", "failed")
    owner.spawn(owner.queue.worker(), "w")
    await owner.settle()
    assert owner.handled == [("a.service", {"failed"}), ("a.service", {"failed", "later"})]
    await owner.close()


@pytest.mark.asyncio
async def test_a_wait_for_a_cause_gets_a_worker_standing_in() -> None:
    owner = Owner()
    gate = owner.gates["dependent.service"] = asyncio.Event()
    owner.spawn(owner.queue.worker(), "w")
    owner.queue.put("dependent.service", "failed")
    assert await owner.handled_units(1) == ["dependent.service"]
    owner.queue.cause_wait(+1)  # the one worker now only waits for its cause
    owner.queue.put("other.service", "failed")
    assert await owner.handled_units(2) == ["dependent.service", "other.service"]
    extra = [t for t in owner.tasks if t.get_name().startswith("listener extra worker")]
    assert len(extra) == 1
    owner.queue.cause_wait(-1)
    gate.set()
    owner.queue.cause_wait(+1)  # a new wait: the extra worker still there stands in
    await owner.settle()
    assert extra == [t for t in owner.tasks if t.get_name().startswith("listener extra worker")]
    await owner.close()
