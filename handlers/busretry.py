"""The ladder's view of systemd across bus reconnects.

A :class:`~handlers.bus.SystemdBus` is one connection: when the bus daemon is
restarted, every call and wait on it fails at once with
:class:`~unitgen.errors.BusConnectionLostError`. :class:`RetryingBus` is what the
recovery engine holds instead. It forwards to the current connection and, when
that one is lost under a call, waits (bounded) for the next and carries on there:

* reads (unit properties, ``Get``, ``ListUnitsByPatterns``, ``LoadUnit``,
  ``ResetFailedUnit``) are sent again;
* a wait for a unit's state starts again with a fresh read (the changes it was
  applying came from the lost connection's signals);
* a restart may have reached systemd before the connection went: the unit is
  read first, and the restart is sent again only if the unit is neither
  starting nor running and has no job queued, so a restart is never doubled.

Where the next connection comes from: the listener makes it and hands it over
with :meth:`RetryingBus.attach`; the OnFailure= process has no listener, so it
passes ``reconnect`` and the handle connects again itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from handlers.bus import SERVICE, UNIT, Expectation, SystemdBus, UnitInfo
from handlers.diagnose import job_queued, restart_reached
from unitgen.errors import BusConnectionLostError, SystemdError

log = logging.getLogger(__name__)

__all__ = ["RECONNECT_WAIT", "RetryingBus"]

# How long a call waits for the next connection before it fails for good.
RECONNECT_WAIT = 30.0
# Connections lost under one call before it gives up (a bus that drops us at once).
MAX_RETRIES = 3

_T = TypeVar("_T")


class RetryingBus:
    """A SystemdClient that outlives the connection it started on."""

    selects_interfaces = True

    def __init__(
        self,
        bus: SystemdBus,
        *,
        reconnect: Callable[[], Awaitable[SystemdBus]] | None = None,
        wait: float = RECONNECT_WAIT,
    ) -> None:
        self._bus = bus
        self._reconnect = reconnect
        self._wait = wait
        self._changed = asyncio.Event()
        self._connecting: asyncio.Lock | None = None
        # The connection each expectation was made on (by id): its changes are that one's.
        self._origin: dict[int, SystemdBus] = {}
        self.retries = 0  # calls sent again on a new connection

    # -- the current connection -----------------------------------------------------

    @property
    def bus(self) -> SystemdBus:
        return self._bus

    def attach(self, bus: SystemdBus) -> None:
        """The listener's new connection: calls waiting for one carry on there."""
        self._bus = bus
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def close(self) -> None:
        """Close the current connection (the owner's teardown path)."""
        await self._bus.close()

    def __getattr__(self, name: str) -> Any:
        # Everything not retried here (raw, lib, scope, call, kill, ...) is the connection's.
        return getattr(self._bus, name)

    async def _live(self, lost: SystemdBus | None = None) -> SystemdBus:
        """A connected bus other than ``lost``; BusConnectionLostError if none comes in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            bus = self._bus
            if bus is not lost and bus.connected:
                return bus
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusConnectionLostError(
                    f"bus connection lost; no new one within {self._wait:g}s"
                )
            if self._reconnect is not None:
                await self._connect_again(bus, remaining)
                continue
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    async def _connect_again(self, dead: SystemdBus, remaining: float) -> None:
        assert self._reconnect is not None
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._bus is not dead:
                return  # another call already did
            try:
                async with asyncio.timeout(remaining):
                    new = await self._reconnect()
            except (SystemdError, TimeoutError) as exc:
                log.info("reconnect failed: %s", exc)
                await asyncio.sleep(min(0.2, max(remaining, 0.0)))
                return
            with contextlib.suppress(SystemdError):
                await dead.close()
            log.info("bus connection re-established")
            self.attach(new)

    async def _retry(self, what: str, call: Callable[[SystemdBus], Awaitable[_T]]) -> _T:
        bus = self._bus if self._bus.connected else await self._live()
        for _ in range(MAX_RETRIES):
            try:
                return await call(bus)
            except BusConnectionLostError as exc:
                log.info("%s: %s; retrying on the next connection", what, exc)
                bus = await self._live(lost=bus)
                self.retries += 1
        return await call(bus)

    # -- reads: sent again ----------------------------------------------------------

    async def unit_properties(
        self,
        name: str,
        interfaces: Iterable[str] = (UNIT, SERVICE),
        *,
        path: str | None = None,
        service_keys: Sequence[str] = (),
    ) -> dict[str, Any]:
        ifaces = tuple(interfaces)
        return await self._retry(
            name,
            lambda b: b.unit_properties(name, ifaces, path=path, service_keys=service_keys),
        )

    async def require_unit(self, name: str) -> dict[str, Any]:
        return await self._retry(name, lambda b: b.require_unit(name))

    async def get_property(self, name: str, prop: str, interface: str = UNIT) -> Any:
        return await self._retry(name, lambda b: b.get_property(name, prop, interface))

    async def load_unit(self, name: str) -> str:
        return await self._retry(name, lambda b: b.load_unit(name))

    async def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]:
        return await self._retry("ListUnitsByPatterns", lambda b: b.list_units(patterns, states))

    async def reset_failed(self, name: str) -> None:
        await self._retry(name, lambda b: b.reset_failed(name))

    async def subscribe(self, *, force: bool = False) -> None:
        await self._retry("Subscribe", lambda b: b.subscribe(force=force))

    # -- waits: started again from a fresh read ---------------------------------------

    def expect_changes(self, name: str) -> Expectation | None:
        bus = self._bus
        expectation = bus.expect_changes(name)
        if expectation is not None:
            self._origin[id(expectation)] = bus
        return expectation

    def forget(self, expectation: Expectation) -> None:
        origin = self._origin.pop(id(expectation), self._bus)
        origin.forget(expectation)

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 - mirrors SystemdBus.wait_for
        interfaces: Iterable[str] = (UNIT, SERVICE),
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ifaces = tuple(interfaces)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        bus = self._bus
        if since is not None:
            origin = self._origin.pop(id(since), bus)
            if origin is not bus:
                # Made on a connection since lost: its changes stopped with it.
                origin.forget(since)
                since, initial = None, None
        first = True

        async def wait(on: SystemdBus) -> dict[str, Any]:
            nonlocal first
            if first and on is bus:
                first = False
                return await on.wait_for(
                    name, predicate, timeout, ifaces, since=since, initial=initial
                )
            # A new connection: the mark and the state seen belong to the lost one.
            return await on.wait_for(name, predicate, max(0.0, deadline - loop.time()), ifaces)

        return await self._retry(f"waiting for {name}", wait)

    # -- restarts: sent again only if systemd did not get them -----------------------

    async def restart(self, name: str, mode: str = "replace") -> str:
        return await self._restart_once(name, lambda bus: bus.restart(name, mode), lambda j: j)

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, SystemdError | None]:
        return await self._restart_once(
            name, lambda bus: bus.reset_and_restart(name, mode), lambda j: (j, None)
        )

    async def _restart_once(
        self,
        name: str,
        send: Callable[[SystemdBus], Awaitable[_T]],
        reached: Callable[[str], _T],
    ) -> _T:
        """``send`` once more on a new connection only if systemd did not get it;
        else ``reached(job)`` of the job the lost connection had started."""
        bus = self._bus
        try:
            return await send(bus)
        except BusConnectionLostError as exc:
            bus = await self._live(lost=bus)
            job = await self._started(bus, name, exc)
            if job is not None:
                return reached(job)
            self.retries += 1
            return await send(bus)

    async def unpin(self, name: str) -> None:
        # A pin is the lost connection's: systemd dropped it with the connection.
        with contextlib.suppress(BusConnectionLostError):
            await self._bus.unpin(name)

    async def _started(self, bus: SystemdBus, name: str, exc: Exception) -> str | None:
        """The restart's job (or "") if it reached systemd before the loss, else None."""
        props = await bus.unit_properties(name, (UNIT,))
        if restart_reached(props):
            job = props.get("Job") if job_queued(props) else None
            log.info(
                "%s: restart reached systemd before the connection was lost (%s, %s)",
                name,
                props.get("ActiveState"),
                f"job {job[0]}" if isinstance(job, list | tuple) else "no job",
            )
            return str(job[1]) if isinstance(job, list | tuple) else ""
        log.info("%s: restart lost with the connection (%s); sending it again", name, exc)
        return None
