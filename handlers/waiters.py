"""Waiting for a unit's state on one connection, driven by its PropertiesChanged signals.

A wait is a :class:`Waiter`: a queue of one unit's changes, of the interfaces it
waits on, filled by :meth:`Waiters.deliver` from the connection's message
handler and drained by :func:`apply_until`, which applies them to the unit's
properties until a predicate holds. Every change carries the arrival number of
its message; a GetAll whose call was watched (:meth:`Waiters.watch_reply`)
gets the arrival number of its reply, so a change that arrived before that
reply (and is therefore already in it) is not applied over it.

:class:`handlers.bus.SystemdBus` owns one :class:`Waiters` and makes the calls
(LoadUnit, AddMatch, GetAll); nothing here talks to the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.buslib import unwrap
from unitgen.errors import BusConnectionLostError, SystemdError

log = logging.getLogger(__name__)

__all__ = ["Expectation", "Waiter", "Waiters", "apply_until"]

# Put into every waiter's queue when the connection ends: wake it, to fail at once.
LOST = "\0connection lost"

# (arrival number, interface, changed, invalidated)
Change = tuple[int, str, dict[str, Any], list[str]]


class Waiter:
    __slots__ = ("interfaces", "path", "queue")

    def __init__(self, path: str, interfaces: tuple[str, ...]) -> None:
        self.path = path
        self.interfaces = interfaces  # only these interfaces' changes are queued
        self.queue: asyncio.Queue[Change] = asyncio.Queue()


@dataclass(frozen=True)
class Expectation:
    """A unit's changes collected from a known point on (see SystemdBus.expect_changes)."""

    waiter: Waiter


class Waiters:
    """Every wait on one connection by object path, and the replies they are ordered against."""

    __slots__ = ("by_path", "replies")

    def __init__(self) -> None:
        self.by_path: dict[str, list[Waiter]] = {}
        # serial of a watched call -> arrival number of its reply (0 until it comes)
        self.replies: dict[int, int] = {}

    def add(self, path: str, interfaces: tuple[str, ...]) -> Waiter:
        waiter = Waiter(path, interfaces)
        self.by_path.setdefault(path, []).append(waiter)
        return waiter

    def drop(self, waiter: Waiter) -> None:
        waiters = self.by_path.get(waiter.path, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self.by_path.pop(waiter.path, None)

    def deliver(self, seq: int, path: str, body: Any) -> None:
        """Queue one PropertiesChanged for the waits on ``path`` that want its interface."""
        waiters = self.by_path.get(path)
        if not waiters:
            return
        try:
            iface, changed, invalidated = body
            # Unwrapped only for a waiter that wants this interface: a wait on
            # the Unit interface skips the Service one's signal, sent with it.
            wanting = [w for w in waiters if iface in w.interfaces]
            item = (seq, str(iface), unwrap(changed), list(invalidated)) if wanting else None
        except (ValueError, TypeError):
            log.warning("malformed PropertiesChanged on %s", path)
            return
        if item is not None:
            for waiter in wanting:
                waiter.queue.put_nowait(item)

    def lose(self, seq: int) -> None:
        """The connection is gone: wake every wait, to fail at once."""
        for waiters in list(self.by_path.values()):
            for waiter in waiters:
                waiter.queue.put_nowait((seq, LOST, {}, []))

    def watch_reply(self, serials: list[int]) -> Callable[[int], None]:
        """A serial hook for a call: its serial goes in ``serials``, its reply is numbered."""

        def hook(serial: int) -> None:
            serials.append(serial)
            self.replies[serial] = 0

        return hook


async def apply_until(
    name: str,
    waiter: Waiter,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float,  # noqa: ASYNC109 - only for the message
    deadline: float,
    props: dict[str, Any],
    gone: asyncio.Event,
    seen: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Apply the waiter's queued changes to ``props`` until ``predicate`` holds.

    ``seen``: per interface, the arrival number of the GetAll reply ``props``
    came from; a change that arrived before it is already in ``props``.
    ``gone`` is the connection's end: the wait then fails at once.
    """
    loop = asyncio.get_running_loop()
    while not predicate(props):
        if gone.is_set():
            raise BusConnectionLostError(f"unit {name}: bus connection lost while waiting")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise SystemdError(
                f"unit {name}: expected state not reached within {timeout:g}s "
                f"(ActiveState={props.get('ActiveState')}, "
                f"SubState={props.get('SubState')})"
            )
        try:
            # Queued already (a burst): no wait at all. Otherwise asyncio.timeout,
            # not wait_for, which wraps each get in a task of its own.
            item = waiter.queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(remaining):
                    item = await waiter.queue.get()
            except TimeoutError:
                continue
        seq, iface, changed, invalidated = item
        if iface == LOST:
            raise BusConnectionLostError(f"unit {name}: bus connection lost while waiting")
        if seen is not None and seq <= seen.get(iface, 0):
            continue
        # systemd invalidates (names without values) only its large array
        # properties (ExecStart=, Conditions, ...), on every signal; reading
        # them again would double the calls of every wait, and no state
        # predicate needs them, so they are dropped rather than re-read.
        for key in invalidated:
            props.pop(key, None)
        props.update(changed)
    return props
