"""Units systemd left stopped because a dependency failed, until it is back.

When a unit with ``Restart=`` is restarted by systemd, the restart job takes the
units that ``Requires=`` or ``BindsTo=`` it along (systemd 252:
``JOB_RESTART_DEPENDENCIES``): they are stopped and queued to start after it. If
systemd then refuses the unit's own start (its start limit), those start jobs end
with result ``dependency`` and the dependents stay ``inactive``, with
``Result=success``: nothing failed, so no failure signal comes for them, and the
ladder that brings the dependency back restarts only the dependency (verified on
systemd 252: the dependents stayed dead). The same happens to a start an operator
or a timer asked for while the dependency was down.

The listener sees the ``JobRemoved`` with result ``dependency``; this registry
keeps which of the unit's ``Requires=``/``BindsTo=``/``Requisite=`` units were
down then, and when the last of them turns active (their PropertiesChanged, no
polling) asks for one ladder run of the dependent, which starts it within its own
budget. A stop the operator asked for is a ``done`` stop job, not a refused
start: it is never undone here.

Memory only: a listener restarted meanwhile leaves such units as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from handlers import bus as busmod
from unitgen.errors import UnitgenError

if TYPE_CHECKING:
    from handlers.bus import SystemdBus

__all__ = ["DEPENDENCY_PROPERTIES", "DependencyWaits", "down_dependencies"]

# The dependencies whose failure refuses a unit's start (Wants= does not).
DEPENDENCY_PROPERTIES = ("Requires", "BindsTo", "Requisite")
# Bound on units waiting at once: a refused-start storm must not grow memory unbounded.
_MAX_WAITING = 10_000


class DependencyWaits:
    """Dependents waiting for their dependencies to be active again; one per listener."""

    def __init__(self, enqueue: Callable[[str, str], None]) -> None:
        """``enqueue(unit, "dependency-back")`` asks for the dependent's ladder run."""
        self._enqueue = enqueue
        self._down: dict[str, set[str]] = {}  # dependent -> its dependencies still down
        self._why: dict[str, str] = {}
        # dependency -> dependents waiting for it: the signal path's one lookup.
        self.dependencies: dict[str, set[str]] = {}

    def __contains__(self, unit: object) -> bool:
        return unit in self._down

    def wait(self, unit: str, down: Iterable[str]) -> None:
        """``unit``'s start was refused; ``down`` are its dependencies not active now.

        With none down (the dependency came back before the listener looked) the
        dependent is resumed at once.
        """
        self.forget(unit)
        deps = set(down) - {unit}
        if not deps:
            self._resume(unit, "its dependencies are active")
            return
        if len(self._down) >= _MAX_WAITING:
            return
        self._down[unit] = deps
        for dep in deps:
            self.dependencies.setdefault(dep, set()).add(unit)

    def reason(self, unit: str) -> str:
        """Why ``unit`` was resumed (once: its ladder run's trigger reason)."""
        return self._why.pop(unit, "")

    def signal(self, dependency: str, body: Any) -> None:
        """A PropertiesChanged of a unit some dependent waits for (bus reader: no I/O)."""
        if busmod.turned_active(body):
            self.active(dependency)

    def active(self, dependency: str) -> None:
        """``dependency`` is active."""
        for unit in self.dependencies.pop(dependency, set()):
            deps = self._down.get(unit)
            if deps is None:
                continue
            deps.discard(dependency)
            if not deps:
                del self._down[unit]
                self._resume(unit, f"{dependency} is active again")

    def _resume(self, unit: str, why: str) -> None:
        self._why[unit] = f"its start was refused while a dependency was down; {why}"
        self._enqueue(unit, "dependency-back")

    def forget(self, unit: str) -> None:
        """``unit`` started or failed since: it waits for nothing here."""
        self._why.pop(unit, None)
        deps = self._down.pop(unit, None)
        for dep in deps or ():
            waiting = self.dependencies.get(dep)
            if waiting is not None:
                waiting.discard(unit)
                if not waiting:
                    del self.dependencies[dep]


async def down_dependencies(bus: SystemdBus, unit: str) -> list[str] | None:
    """``unit``'s Requires=/BindsTo=/Requisite= units that are not active, sorted.

    None when systemd does not answer for ``unit`` itself. A dependency it cannot
    answer for (not loaded) counts as down: its start would be refused again.
    """
    try:
        lists = await asyncio.gather(*(bus.get_property(unit, p) for p in DEPENDENCY_PROPERTIES))
    except UnitgenError:  # unloaded since, or the bus went: nothing to wait on
        return None
    deps = sorted({str(d) for names in lists for d in names})
    states = await asyncio.gather(
        *(bus.get_property(d, "ActiveState") for d in deps), return_exceptions=True
    )
    return [d for d, state in zip(deps, states, strict=True) if state != "active"]
