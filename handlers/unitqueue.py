"""The listener's work queue: one entry per unit, one worker per unit at a time.

Signals arrive inside the bus reader, many per unit in a burst; each only names
the unit and why (``failed``, ``health``, ``job``...). :meth:`UnitQueue.put`
coalesces: a unit already waiting gains a reason and no second entry, and a unit
being handled is handled again once with everything that came meanwhile. So the
queue holds distinct units, and its bound (``max_pending``) is a bound on units,
not signals. A full queue drops the unit, counts it and asks for a reconciliation
once the queue has drained: nothing is lost silently, and nothing is polled.

A fixed pool of workers takes units from the queue. A run that only waits (its
incident group's cause being recovered by another run) would hold its worker idle;
:meth:`UnitQueue.cause_wait` adds a worker for each such wait, so a burst of
dependents waiting for one database never holds back an unrelated unit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["UnitQueue"]

log = logging.getLogger(__name__)

Handler = Callable[[str, set[str]], Awaitable[None]]


class UnitQueue:
    """Coalescing per-unit queue and its workers; the owner spawns and cancels the tasks."""

    def __init__(
        self,
        handle: Handler,
        *,
        max_pending: int,
        spawn: Callable[[Awaitable[Any], str], asyncio.Task[Any]],
        on_drop: Callable[[], None],
        on_drained: Callable[[], None],
    ) -> None:
        """``handle(unit, reasons)`` must not raise (the owner logs and counts);
        ``on_drop`` is told of each dropped unit, ``on_drained`` when the queue is
        empty again after a drop (the owner reconciles)."""
        self._handle = handle
        self._spawn = spawn
        self._on_drop = on_drop
        self._on_drained = on_drained
        self._queue: asyncio.Queue[str] = asyncio.Queue(max_pending)
        self._reasons: dict[str, set[str]] = {}  # queued or handled again: why
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self.resync = False  # something was dropped: reconcile once the queue drains
        self.coalesced = 0
        self.dropped = 0
        self._cause_waits = 0
        self._extra_workers = 0

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def pending(self) -> int:
        """Units waiting for a worker."""
        return self._queue.qsize()

    def put(self, unit: str, reason: str) -> None:
        reasons = self._reasons.get(unit)
        if reasons:
            reasons.add(reason)
            self.coalesced += 1
            return
        if unit in self._busy:
            self._reasons.setdefault(unit, set()).add(reason)
            self._again.add(unit)
            return
        try:
            self._queue.put_nowait(unit)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self.resync:
                log.warning(
                    "listener queue full (%d units); dropping, will reconcile", self.maxsize
                )
            self.resync = True
            try:
                self._on_drop()
            except Exception:
                log.exception("drop counter failed")
            return
        self._reasons.setdefault(unit, set()).add(reason)

    def defer(self, unit: str, reasons: set[str]) -> None:
        """Reasons a handler took but could not act on yet (no bus): its worker's loop
        takes them again."""
        self._reasons.setdefault(unit, set()).update(reasons)

    async def worker(self) -> None:
        while True:
            unit = await self._queue.get()
            try:
                await self._take(unit)
            finally:
                self._queue.task_done()
            if self.resync and self._queue.empty():
                self.resync = False
                self._on_drained()

    def cause_wait(self, delta: int) -> None:
        """A run started (+1) or stopped (-1) waiting for its incident group's cause.

        Its worker would sit idle for as long: an extra worker takes its place. The
        extra workers go again as the waits end.
        """
        self._cause_waits += delta
        while self._extra_workers < self._cause_waits:
            self._extra_workers += 1
            self._spawn(self._extra_worker(), f"listener extra worker {self._extra_workers}")

    async def _extra_worker(self) -> None:
        try:
            while self._extra_workers <= self._cause_waits:
                unit = await self._queue.get()
                try:
                    await self._take(unit)
                finally:
                    self._queue.task_done()
        finally:
            self._extra_workers -= 1

    async def _take(self, unit: str) -> None:
        if unit in self._busy:
            self._again.add(unit)
            return
        self._busy.add(unit)
        try:
            while True:
                reasons = self._reasons.pop(unit, set())
                self._again.discard(unit)
                if not reasons:
                    break
                await self._handle(unit, reasons)
                if unit not in self._again and not self._reasons.get(unit):
                    break
        finally:
            self._busy.discard(unit)
