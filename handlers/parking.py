"""Parking: a unit the ladder would give up on is retried slowly, and at once when
what it waits for is back.

With ``recovery.after_give_up = "park"`` a run that would end in GAVE_UP for a
reason with a way back (:data:`handlers.ladder.PARKABLE`) ends in PARKED. The
unit is then retried

* every ``recovery.park_interval`` (default 10 min), counted from its last
  parking, and
* at once when what it waits for comes back: a dependency unit becoming active
  (the listener's PropertiesChanged stream, no polling), a ``depends`` probe or
  its own health probe passing, or the disk check passing again (these are
  checked every :data:`CHECK_EVERY`: there is no signal for them).

Each retry is a fresh ladder run with the unit's usual budget (handlers/recovery):
it can end recovered, or parked again after its own bounded waits. So a parked
unit never restarts more than ``max_attempts`` times per ``window``, and a
dependency that stays down costs no restart at all. One reminder alert a day
says it is still parked.

This module has two parts: the pure part (what a unit waits for, the lifecycle
:data:`TRANSITIONS` of a parked unit, the schedule arithmetic on an injected
monotonic timeline), and :class:`Parking`, the listener's registry of parked
units, which owns one small task per parked unit and calls back into the
listener to resume or remind. The engine records parking (history, ledger,
alert); this registry only decides *when* to try again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
from collections.abc import Awaitable, Callable, KeysView
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handlers.ladder import GiveUp
from handlers.tasks import log_failure

if TYPE_CHECKING:
    from handlers.recovery.model import Clock
    from unitgen.model import Probe

__all__ = [
    "CHECK_EVERY",
    "DAY",
    "DISK",
    "HEALTH",
    "TRANSITIONS",
    "Cue",
    "ParkedUnit",
    "Parking",
    "Phase",
    "checks_of",
    "describe",
    "next_wake",
    "reminder_day",
    "step",
    "units_of",
    "waits_for",
]

log = logging.getLogger(__name__)

DAY = 86_400.0
# How often a parked unit's probes and disk check run: there is no signal for an
# external service or free space coming back. A dependency unit is a signal, not this.
CHECK_EVERY = 30.0
# The least time between two resumes of one unit: a dependency that flaps between
# active and failed must not turn its dependents' retries into a busy loop.
RESUME_GAP = 2.0

# Tokens of what a parked unit waits for, besides dependency unit names and the
# ``depends[i]`` probes: its own health probe, and the disk check.
HEALTH = "health"
DISK = "disk"


def waits_for(give_up: GiveUp, waiting_on: tuple[str, ...], *, has_health: bool) -> tuple[str, ...]:
    """What a unit parked for ``give_up`` waits for (besides its slow retry)."""
    if give_up is GiveUp.DEPENDENCY:
        return waiting_on
    if give_up is GiveUp.DISK:
        return (DISK,)
    if give_up is GiveUp.BUDGET and has_health:
        # Active but unhealthy until the budget ran out: healthy again ends it.
        return (HEALTH,)
    return ()


def describe(waits: tuple[str, ...], depends: tuple[Probe, ...] = ()) -> str:
    """What a parked unit waits for, for people: "db.service, tcp 127.0.0.1:5432"."""
    shown: list[str] = []
    for w in waits:
        if w == HEALTH:
            shown.append("its health probe")
        elif w == DISK:
            shown.append("free disk space")
        elif w.startswith("depends["):
            try:
                probe = depends[int(w[len("depends[") : -1])]
            except (ValueError, IndexError):
                shown.append(w)
                continue
            target = probe.target if isinstance(probe.target, str) else " ".join(probe.target)
            shown.append(f"{probe.kind} {target}"[:120])
        else:
            shown.append(w)
    return ", ".join(shown) or "the next retry"


def units_of(waits: tuple[str, ...]) -> tuple[str, ...]:
    """The dependency units among ``waits``: watched through PropertiesChanged."""
    return tuple(w for w in waits if w not in (HEALTH, DISK) and not w.startswith("depends["))


def checks_of(waits: tuple[str, ...]) -> tuple[str, ...]:
    """The waits that must be checked on a schedule: probes, health, disk."""
    return tuple(w for w in waits if w in (HEALTH, DISK) or w.startswith("depends["))


def reminder_day(since: float, now: float) -> int:
    """Whole days parked at ``now`` (monotonic): the reminder for day N goes out once."""
    return max(0, math.floor((now - since) / DAY))


def next_wake(
    *,
    now: float,
    at: float,
    since: float,
    interval: float,
    reminded: int,
    checked: float | None,
) -> float:
    """Seconds until the next thing a parked unit's task must do: the slow retry
    (``interval`` after ``at``), the next daily reminder, or (``checked``: when its
    probes and disk check last ran, None when it has none) the next check."""
    due = [at + interval, since + DAY * (reminded + 1)]
    if checked is not None:
        due.append(checked + min(CHECK_EVERY, interval))
    return max(0.0, min(due) - now)


# --- the lifecycle of a parked unit ---------------------------------------------------


class Phase(enum.Enum):
    PARKED = "parked"  # waiting: for its cause to come back, or the slow retry
    RESUMING = "resuming"  # a fresh ladder run was asked for; its outcome decides
    RELEASED = "released"  # no longer parked (recovered, stopped for good, reset)


class Cue(enum.Enum):
    """What happened to a parked unit."""

    DEPENDENCY_ACTIVE = "dependency-active"
    ACTIVE = "active"  # the parked unit itself is active again (an operator started it)
    PROBE_PASSED = "probe-passed"  # a depends probe, its health probe, or the disk check
    TIMER = "timer"  # park_interval since it was parked last
    PARKED = "parked"  # a run ended parked (again)
    ENDED = "ended"  # a run ended otherwise, or `unitgen reset`


TRANSITIONS: dict[tuple[Phase, Cue], Phase] = {
    # What it waits for is back: try now, not at the next slow retry.
    (Phase.PARKED, Cue.DEPENDENCY_ACTIVE): Phase.RESUMING,
    (Phase.PARKED, Cue.PROBE_PASSED): Phase.RESUMING,
    # Someone started it: a run sees it active and closes the incident recovered.
    (Phase.PARKED, Cue.ACTIVE): Phase.RESUMING,
    # Nothing said it is back, but the slow retry is due: one bounded run.
    (Phase.PARKED, Cue.TIMER): Phase.RESUMING,
    # Another trigger's run (a reconciliation, a hand-off) parked it again: the
    # schedule counts from this parking.
    (Phase.PARKED, Cue.PARKED): Phase.PARKED,
    # Recovered by another run (an operator's start, `unitgen reset`): nothing to wait for.
    (Phase.PARKED, Cue.ENDED): Phase.RELEASED,
    # The resumed run still found it down, after its own bounded waits: park again.
    (Phase.RESUMING, Cue.PARKED): Phase.PARKED,
    # The resumed run recovered it (or it stopped for good): done.
    (Phase.RESUMING, Cue.ENDED): Phase.RELEASED,
    # A second dependency came back while the run is on: that run checks it anyway.
    (Phase.RESUMING, Cue.DEPENDENCY_ACTIVE): Phase.RESUMING,
    (Phase.RESUMING, Cue.PROBE_PASSED): Phase.RESUMING,
    (Phase.RESUMING, Cue.ACTIVE): Phase.RESUMING,
    # The resumed run never reported (its trigger was lost): count it as parked again.
    (Phase.RESUMING, Cue.TIMER): Phase.PARKED,
    # Parked again after a release (a new failure ran out of its budget again).
    (Phase.RELEASED, Cue.PARKED): Phase.PARKED,
    (Phase.RELEASED, Cue.ENDED): Phase.RELEASED,
}


class InvalidParkingError(RuntimeError):
    """A cue the phase cannot take: a bug."""


def step(phase: Phase, cue: Cue) -> Phase:
    try:
        return TRANSITIONS[(phase, cue)]
    except KeyError:
        raise InvalidParkingError(
            f"no parking transition from {phase.value} on {cue.value}"
        ) from None


@dataclass(frozen=True)
class ParkedUnit:
    """The engine's account of a parked unit (handlers/recovery), for the registry."""

    unit: str
    incident_id: str
    waiting_for: tuple[str, ...]
    reason: str
    since: float  # first parked, on the monotonic timeline
    at: float  # last parked, on the monotonic timeline
    interval: float


# --- the registry (the listener's) ----------------------------------------------------

Resume = Callable[[str, Cue, str], None]  # unit, why, detail
Remind = Callable[[str, int], None]  # unit, whole days parked
Check = Callable[[str, tuple[str, ...]], Awaitable[tuple[bool, str]]]


@dataclass
class _Entry:
    info: ParkedUnit
    phase: Phase = Phase.PARKED
    reminded: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cue: tuple[Cue, str] | None = None
    task: asyncio.Task[None] | None = None
    checked: float = 0.0  # when its probes / disk check last ran (monotonic)
    resumed: float = 0.0  # when its last resume was asked for (monotonic)


class Parking:
    """The parked units of one listener, each with a task that sleeps until it is due.

    ``resume`` is called (on the loop, never inside a signal handler's I/O) when a
    unit should get a fresh ladder run; the run's end comes back as :meth:`park`
    (parked again) or :meth:`release`. ``check`` runs the probes and disk check a
    unit waits for. Nothing here sleeps without a bound, and a unit whose run
    never reports is treated as parked again after one interval.
    """

    def __init__(
        self,
        *,
        resume: Resume,
        remind: Remind,
        check: Check | None,
        clock: Clock,
    ) -> None:
        self._resume = resume
        self._remind = remind
        self._check = check
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # dependency unit -> the parked units waiting for it (the signal path's lookup)
        self._waiters: dict[str, set[str]] = {}

    # --- what the listener and the engine tell it --------------------------------------

    def park(self, info: ParkedUnit) -> None:
        if info.interval < RESUME_GAP:
            # A hand-written policy's tiny interval must not make the retries a loop.
            info = dataclasses.replace(info, interval=RESUME_GAP)
        entry = self._entries.get(info.unit)
        if entry is None:
            entry = _Entry(info)
            entry.reminded = reminder_day(info.since, self._clock.monotonic())
            self._entries[info.unit] = entry
        else:
            if info.since != entry.info.since:
                entry.reminded = reminder_day(info.since, self._clock.monotonic())
            self._unindex(entry)
            entry.info = info
            entry.phase = step(entry.phase, Cue.PARKED)
            entry.cue = None
        for dep in units_of(info.waiting_for):
            self._waiters.setdefault(dep, set()).add(info.unit)
        entry.wake.set()  # re-plan its schedule from this parking
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._run(entry), name=f"parked {info.unit}")
            entry.task.add_done_callback(log_failure(log))

    def release(self, unit: str) -> None:
        entry = self._entries.pop(unit, None)
        if entry is None:
            return
        entry.phase = step(entry.phase, Cue.ENDED)
        self._unindex(entry)
        if entry.task is not None:
            entry.task.cancel()

    def watched(self) -> tuple[KeysView[str], KeysView[str]]:
        """Live views of (the units parked units wait for, the parked units): the
        signal path tests membership in them without a method call."""
        return self._waiters.keys(), self._entries.keys()

    def waits_on(self, name: str, *, itself: bool = False) -> bool:
        """Whether a parked unit waits for ``name`` (``itself``: whether ``name`` is
        parked). Cheap: the signal path asks."""
        return name in (self._entries if itself else self._waiters)

    def dependency_active(self, name: str) -> None:
        """``name`` became active (a PropertiesChanged signal): resume its waiters now."""
        for unit in sorted(self._waiters.get(name, ())):
            self._cue(unit, Cue.DEPENDENCY_ACTIVE, f"{name} is active")

    def unit_active(self, unit: str) -> None:
        """The parked unit itself became active (a PropertiesChanged signal)."""
        if unit in self._entries:
            self._cue(unit, Cue.ACTIVE, f"{unit} is active")

    def cue(self, unit: str, cue: Cue, detail: str) -> None:
        self._cue(unit, cue, detail)

    def parked(self) -> dict[str, ParkedUnit]:
        return {u: e.info for u, e in self._entries.items()}

    def phase(self, unit: str) -> Phase:
        entry = self._entries.get(unit)
        return entry.phase if entry is not None else Phase.RELEASED

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        self._entries.clear()
        self._waiters.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------

    def _unindex(self, entry: _Entry) -> None:
        for dep in units_of(entry.info.waiting_for):
            waiting = self._waiters.get(dep)
            if waiting is not None:
                waiting.discard(entry.info.unit)
                if not waiting:
                    del self._waiters[dep]

    def _cue(self, unit: str, cue: Cue, detail: str) -> None:
        entry = self._entries.get(unit)
        if entry is None or entry.phase is not Phase.PARKED:
            return
        entry.cue = (cue, detail)
        entry.wake.set()

    def _go(self, entry: _Entry, cue: Cue, detail: str) -> None:
        entry.phase = step(entry.phase, cue)
        entry.cue = None
        entry.resumed = self._clock.monotonic()
        log.info("%s: resuming a parked unit (%s: %s)", entry.info.unit, cue.value, detail)
        try:
            self._resume(entry.info.unit, cue, detail)
        except Exception:
            log.exception("%s: resuming failed", entry.info.unit)

    async def _sleep(self, entry: _Entry, seconds: float) -> None:
        """Until ``seconds`` pass or the entry's event is set (whichever is first)."""
        if entry.wake.is_set():
            entry.wake.clear()
            return
        waiter = asyncio.ensure_future(entry.wake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waiter, sleeper):
                fut.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)
        entry.wake.clear()

    async def _run(self, entry: _Entry) -> None:
        while True:
            info = entry.info
            now = self._clock.monotonic()
            if entry.phase is Phase.RESUMING:
                # Waiting for the run's outcome (park or release); bounded by one interval.
                lost = entry.resumed + info.interval
                await self._sleep(entry, max(0.0, lost - now))
                if entry.phase is Phase.RESUMING and self._clock.monotonic() >= lost:
                    entry.phase = step(entry.phase, Cue.TIMER)
                    entry.info = ParkedUnit(
                        info.unit,
                        info.incident_id,
                        info.waiting_for,
                        info.reason,
                        info.since,
                        self._clock.monotonic(),
                        info.interval,
                    )
                continue
            if entry.cue is not None:
                gap = entry.resumed + RESUME_GAP - now if entry.resumed else 0.0
                if gap > 0:
                    await self._clock.sleep(gap)
                if entry.cue is not None and entry.phase is Phase.PARKED:
                    self._go(entry, *entry.cue)
                continue
            checks = checks_of(info.waiting_for) if self._check is not None else ()
            checked = max(entry.checked, info.at) if checks else None
            wait = next_wake(
                now=now,
                at=info.at,
                since=info.since,
                interval=info.interval,
                reminded=entry.reminded,
                checked=checked,
            )
            if wait > 0:
                await self._sleep(entry, wait)
                continue  # re-plan: woken early (a cue, a new parking) or due now
            if now >= info.since + DAY * (entry.reminded + 1):
                day = max(entry.reminded + 1, reminder_day(info.since, now))
                entry.reminded = day
                try:
                    self._remind(info.unit, day)
                except Exception:
                    log.exception("%s: parked reminder failed", info.unit)
            if (
                checked is not None
                and self._check is not None
                and now >= checked + min(CHECK_EVERY, info.interval)
            ):
                entry.checked = now
                ok, detail = await self._check(info.unit, checks)
                if entry.phase is not Phase.PARKED or entry.info is not info:
                    continue  # parked afresh or released while checking
                if ok:
                    self._go(entry, Cue.PROBE_PASSED, detail)
                    continue
            if now >= info.at + info.interval:
                self._go(entry, Cue.TIMER, f"retry every {info.interval:g}s")
