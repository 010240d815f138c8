"""The listener's side of parked units: what it tells the registry, and what it asks.

:class:`handlers.parking.Parking` decides *when* a parked unit is tried again;
the engine (:mod:`handlers.recovery.parked`) records parking in the history and
the ledger. Between them sits this: it registers the units the engine says are
parked (at the end of each run, and at every reconciliation, so that a
restarted listener picks up the schedule where the last one left it), turns
systemd's signals into the registry's cues (a dependency or the unit itself
turning active), and turns the registry's calls (resume, remind, check) into a
queued ladder run or a call on the engine.

Everything here runs on the loop; the two signal entry points run inside the bus
reader and do no I/O (a look at a dependency's state is a task of its own).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from handlers import bus as busmod
from handlers.parking import Cue, ParkedUnit, Parking, Phase, units_of
from unitgen.errors import SystemdError, UnitgenError

if TYPE_CHECKING:
    import asyncio

    from handlers.recoverer import Recoverer
    from handlers.recovery.model import Clock

__all__ = ["ParkWatch"]

log = logging.getLogger(__name__)


class ParkWatch:
    """Parked units as the listener follows them; one per listener."""

    def __init__(
        self,
        *,
        engine: Callable[[], Recoverer | None],
        bus: Callable[[], busmod.SystemdBus | None],
        enqueue: Callable[[str, str], None],
        spawn: Callable[[Awaitable[Any], str], asyncio.Task[Any]],
        watched: Callable[[str], bool],
        clock: Clock | None = None,
    ) -> None:
        """``enqueue(unit, "unpark")`` queues a retry run; ``watched`` is the watch set."""
        self._engine = engine
        self._bus = bus
        self._enqueue = enqueue
        self._spawn = spawn
        self._watched = watched
        if clock is None:
            # Imported here: the listener's module loads without the engine.
            from handlers.recovery.model import SystemClock

            clock = SystemClock()
        self.registry = Parking(
            resume=self._resume,
            remind=self._remind,
            check=self.check,
            clock=clock,
        )
        # Live views, for the signal path: a set lookup per signal (bench/bench_parking.py).
        self.dependencies, self.units = self.registry.watched()
        self._why: dict[str, str] = {}

    async def close(self) -> None:
        await self.registry.close()

    # -- from the engine ---------------------------------------------------------------

    def changed(self, unit: str, info: ParkedUnit | None) -> None:
        """The engine's ``on_parking``: called at the end of every run of ``unit``."""
        if info is None:
            self.registry.release(unit)
            return
        self.registry.park(info)
        if units_of(info.waiting_for):
            # It may have come back between the run's last look and now: no signal
            # would come for that, so look once.
            self._spawn(self._look_at_dependencies(info), f"parked {unit}: look")

    def register(self) -> None:
        """Parked units (from the history and the ledger), at every reconciliation.

        The retry is due ``park_interval`` after the last parking, not after this
        listener's start.
        """
        engine = self._engine()
        if engine is None:
            return
        try:
            found = engine.parked_units()
        except UnitgenError as exc:
            log.warning("reading parked units failed: %s", exc)
            return
        known = self.registry.parked()
        for info in found:
            if not self._watched(info.unit) or known.get(info.unit) == info:
                continue
            if self.registry.phase(info.unit) is Phase.RESUMING:
                continue  # its run is on; that run's end registers it again
            self.changed(info.unit, info)

    # -- from the listener ---------------------------------------------------------------

    def dependency_signal(self, name: str, body: Any) -> None:
        """A PropertiesChanged of a unit some parked unit waits for (bus reader)."""
        if busmod.turned_active(body):
            self.registry.dependency_active(name)

    def unit_active(self, unit: str) -> None:
        """A parked unit turned active (someone started it): the registry lets it go."""
        self.registry.unit_active(unit)

    def reason(self, unit: str) -> str:
        """Why the registry resumed ``unit`` (once: the retry run's trigger reason)."""
        return self._why.pop(unit, "")

    def swallows_health_failure(self, unit: str) -> bool:
        """Whether a failed health round of ``unit`` is the registry's, not the ladder's.

        Parked with its budget spent on an unhealthy unit, its registry checks the
        probe and retries it; a run per failed round would only park it again and
        write two history rows each time. Re-armed since (``unitgen reset``, maybe
        by another process), the registry's mark is stale and is dropped here.
        """
        if not self.registry.waits_on(unit, itself=True):
            return False
        engine = self._engine()
        if engine is not None and engine.parked_info(unit) is not None:
            return True
        self.registry.release(unit)
        return False

    # -- the registry's calls ----------------------------------------------------------------

    async def _look_at_dependencies(self, info: ParkedUnit) -> None:
        bus = self._bus()
        if bus is None:
            return
        for dep in units_of(info.waiting_for):
            try:
                state = await bus.get_property(dep, "ActiveState")
            except SystemdError:
                continue
            if state == "active":
                self.registry.dependency_active(dep)

    def _resume(self, unit: str, cue: Cue, detail: str) -> None:
        self._why[unit] = f"{cue.value}: {detail}"[:500]
        self._enqueue(unit, "unpark")

    def _remind(self, unit: str, day: int) -> None:
        engine = self._engine()
        if engine is not None:
            engine.remind_parked(unit, day)

    async def check(self, unit: str, checks: tuple[str, ...]) -> tuple[bool, str]:
        """The registry's check of what ``unit`` waits for: ok when all of it passes."""
        engine = self._engine()
        if engine is None:
            return False, "no engine"
        if engine.parked_info(unit) is None:
            # Reset or recovered since it parked: pass, so that the retry run ends the
            # registry's stale mark ("no longer parked") whatever its checks say.
            return True, "no longer parked"
        return await engine.check_parked(unit, checks)
