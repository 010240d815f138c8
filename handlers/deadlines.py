"""Deadlines for many short awaits, kept by one timer.

``asyncio.timeout()`` around each D-Bus call was a fifth of the CPU a call costs
us (docs/listener.md, "What any Python listener pays"). Each one builds a
Timeout, schedules a TimerHandle and cancels it, and a cancelled 25 s deadline
stays in the loop's timer heap until it comes due, so a burst of calls grows
the heap every loop iteration works on.

Here a deadline is a dict entry, and one timer, set for the earliest deadline
and only while something is in flight, cancels the tasks that ran out of time.
With one timeout for all calls a new deadline is never the earliest, so the
timer is not moved; it is cancelled when nothing is left in flight, so an idle
daemon has no timer at all.

Usage, inside the task that awaits::

    key = deadlines.add(timeout)
    try:
        await something()
    except asyncio.CancelledError:
        if deadlines.timed_out(key):
            raise TimeoutError from None
        raise
    finally:
        deadlines.discard(key)
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._expired: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def armed(self) -> bool:
        """True while the timer is scheduled: never when nothing is in flight."""
        return self._timer is not None

    def add(self, timeout: float) -> int:
        """Cancel the current task if it still holds this key ``timeout`` s from now."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.add() must be called from a task")
        loop = task.get_loop()
        self._next += 1
        key = self._next
        deadline = loop.time() + max(0.0, timeout)
        self._entries[key] = (deadline, task)
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._sweep)
        return key

    def discard(self, key: int) -> None:
        """The await is over, one way or another."""
        self._entries.pop(key, None)
        self._expired.discard(key)
        if not self._entries and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def timed_out(self, key: int) -> bool:
        """After a CancelledError: True when it was this deadline's own cancel.

        That cancel is then undone (``Task.uncancel``), so the caller can raise
        its own error instead. A cancel from outside as well still stands: False.
        """
        if key not in self._expired:
            return False
        task = asyncio.current_task()
        return task is None or task.uncancel() == 0

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        # The loop runs a timer up to its clock resolution early: a deadline within
        # a millisecond has passed, or this would re-arm for the same instant.
        now = loop.time() + 0.001
        earliest: float | None = None
        for key, (deadline, task) in list(self._entries.items()):
            if key in self._expired:
                continue
            if deadline <= now:
                self._expired.add(key)
                task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._timer = loop.call_at(earliest, self._sweep)

    def expire_all(self) -> None:
        """Cancel every await in flight now, as if its deadline had come.

        For a connection that is gone: nothing in flight can be answered any more.
        ``timed_out`` is then True for each, and the caller tells the two apart.
        """
        for key, (_deadline, task) in list(self._entries.items()):
            if key not in self._expired:
                self._expired.add(key)
                task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
