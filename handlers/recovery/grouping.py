"""Incident groups in the engine: joining, the group's events and its one alert.

The bookkeeping is :class:`handlers.correlation.Correlator`'s (pure); this
module turns what it answers into effects: ``GroupOpened``/``GroupClosed``
events, the group's alert (once when it opens, once when it closes), the gate
that keeps a member's own alerts from going out beside it, the bounded number
of a group's restarts in flight, the host-wide restart rate, and the hook that
tells the listener a run is only waiting for its cause (so its worker slot is
not taken from unrelated failures). With no correlator (the OnFailure= path,
one unit a process) every method here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from handlers.correlation import (
    GAVE_UP,
    GROUP_ALERT_WAIT_MAX,
    RECOVERED,
    WAITING,
    Cause,
    Correlator,
    Group,
    RestartRate,
)
from handlers.events import Event, EventKind
from handlers.ladder import State
from handlers.recovery.alerting import Gate
from handlers.recovery.core import Core
from handlers.recovery.model import Outcome, Run

log = logging.getLogger("handlers.recovery")

T = TypeVar("T")

# Unit names listed in an alert's text; the full list is in its ``members``.
_LISTED = 20


def listing(units: list[str]) -> str:
    shown = ", ".join(units[:_LISTED])
    more = len(units) - _LISTED
    return f"{shown} … (+{more} more)" if more > 0 else shown


def group_outcome(outcome: Outcome) -> str:
    """A run's outcome as its group counts it."""
    if outcome.state in (State.RECOVERED, State.NOT_NEEDED, State.WAITING_FOR_SYSTEMD):
        return RECOVERED
    if outcome.state is State.PARKED:
        return WAITING  # retried when what it waits for comes back
    if outcome.state is State.GAVE_UP and outcome.reason.startswith("dependency"):
        return WAITING
    return GAVE_UP


class Grouping(Core):
    """The engine's side of incident groups (see the module docstring)."""

    correlator: Correlator | None
    _rate: RestartRate
    _group_slots: asyncio.Semaphore
    _on_wait: Callable[[int], None] | None
    _group_walls: dict[str, float]
    _closing: bool
    _unchecked: set[str]  # runs in progress that have not yet checked their dependencies

    def set_wait_hook(self, hook: Callable[[int], None] | None) -> None:
        """``hook(+1)`` when a run starts waiting for its cause, ``hook(-1)`` when done."""
        self._on_wait = hook

    # --- membership ---------------------------------------------------------------------

    def _group_began(self, unit: str) -> None:
        if self.correlator is None:
            return
        self._unchecked.add(unit)
        announced = self.correlator.began(unit)
        if announced is not None:
            self._announce(announced)

    def _group_join(self, run: Run, cause: Cause) -> None:
        if self.correlator is None:
            return
        group, announced = self.correlator.join(run.unit, cause)
        if run.group != group.id:
            run.group = group.id
            self._record_step(run, "group", "joined", f"group {group.id}: {cause.label}", 0.0)
        if announced:
            self._announce(group)

    def _group_end(self, unit: str, outcome: str) -> None:
        correlator = self.correlator
        if correlator is None:
            return
        self._unchecked.discard(unit)
        done = correlator.finish(unit, outcome or GAVE_UP)
        # Only an announced group has anything to say when it closes; the others are
        # forgotten as new failures come (no timer for a lone failure).
        if any(g.announced for g in done) and not self._closing:
            self._closing = True
            self._spawn_deferred(self._close_later(), "incident group close")

    def _close_groups(self) -> None:
        """At the engine's close: the groups whose members are all done close now."""
        if self.correlator is not None:
            for group in self.correlator.close_due(now_all=True):
                if group.announced:
                    self._closed(group)

    async def _close_later(self) -> None:
        correlator = self.correlator
        try:
            while correlator is not None and correlator.pending_close():
                await self.clock.sleep(correlator.linger / 4)
                for group in correlator.close_due():
                    if group.announced:
                        self._closed(group)
        finally:
            self._closing = False

    async def _waiting(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (a dependency's recovery) as a run that only waits."""
        hook = self._on_wait
        if hook is None:
            return await awaitable
        hook(1)
        try:
            return await awaitable
        finally:
            hook(-1)

    def _group_checked(self, unit: str) -> None:
        """The run checked its dependencies: it has joined the group of any it shares."""
        self._unchecked.discard(unit)

    # --- restarts -----------------------------------------------------------------------

    async def _restart_admission(self, run: Run) -> None:
        """A group's restarts in flight are bounded; every ladder restart is rate-limited."""
        group = self.correlator.group_of(run.unit) if self.correlator and run.group else None
        if group is not None and group.cause.kind == "dependency" and not run.slot:
            # Dependents restarting once their cause is back; a unit in no announced
            # dependency group never waits here.
            await self._waiting(self._group_slots.acquire())
            run.slot = True
        wait = self._rate.delay()
        if wait > 0:
            run.notes.append(f"host-wide restart rate: waited {wait:.3f}s")
            await self.clock.sleep(wait)

    def _release_slot(self, run: Run) -> None:
        if run.slot:
            run.slot = False
            self._group_slots.release()

    # --- what the world is told ---------------------------------------------------------

    def _gate(self, unit: str, held: float) -> Gate:
        """A unit's firing alert: its group's alert covers it, or hold it, or send it.

        Held only while other failures are in flight, for a window, and longer (up to
        GROUP_ALERT_WAIT_MAX) while the unit's own run has not yet checked its
        dependencies: under load the listener may reach that check late.
        """
        correlator = self.correlator
        if correlator is None:
            return "send"
        if correlator.covered(unit):
            return "drop"
        if held == 0.0:
            return "hold" if correlator.busy(unit) else "send"
        if unit in self._unchecked and held < GROUP_ALERT_WAIT_MAX:
            return "hold"
        return "send"

    def _group_event(self, kind: EventKind, group: Group) -> None:
        units = group.units()
        fields: dict[str, str | int | float | bool] = {
            "cause": group.cause.label,
            "cause_kind": group.cause.kind,
            "members": " ".join(units),
            "member_count": len(units),
        }
        if kind is EventKind.GROUP_CLOSED:
            fields["recovered"] = len(group.with_outcome(RECOVERED))
            fields["gave_up"] = len(group.with_outcome(GAVE_UP))
            fields["waiting"] = len(group.with_outcome(WAITING))
            fields["state"] = "recovered" if group.recovered else "gave-up"
        self._deliver_event(Event(kind, group.cause.unit or units[0], group.id, fields))

    def _announce(self, group: Group) -> None:
        self._group_walls[group.id] = self.clock.time()
        cause = self.store.last_incident(group.cause.unit) if group.cause.unit else None
        recent = cause is not None and (
            cause.state == "open"
            or (cause.closed is not None and self.clock.time() - cause.closed.wall < 60.0)
        )
        if cause is not None and recent:
            # The cause's own incident says so too (`unitgen history`, `unitgen status`).
            self.store.record_attempt(
                cause.id,
                cause.unit,
                at=self._stamp(),
                level=cause.level,
                action="group",
                result="cause",
                reason=f"group {group.id}: {group.cause.label}",
            )
        log.warning("incident group %s opened: %s", group.id, group.cause.label)
        self._group_event(EventKind.GROUP_OPENED, group)
        self._spawn_deferred(self._alert_later(group), f"group alert {group.id}")

    async def _alert_later(self, group: Group) -> None:
        # Sent once members stop joining for a window (bounded), so that the one alert
        # names the units that failed with the first ones.
        correlator = self.correlator
        window = correlator.window if correlator is not None else 0.0
        waited = 0.0
        while True:
            seen = group.involved
            await self.clock.sleep(window)
            waited += window
            if group.involved == seen or waited >= GROUP_ALERT_WAIT_MAX:
                break
        if group.closed_at is None:
            self._group_alert(group, "firing", "opened")

    def _closed(self, group: Group) -> None:
        self._group_event(EventKind.GROUP_CLOSED, group)
        self._group_alert(group, "firing", "opened")  # once: a no-op if it went out
        if group.recovered:
            self._group_alert(group, "resolved", "")
        else:
            self._group_alert(group, "firing", "ended")
        self._group_walls.pop(group.id, None)

    def _group_alert(self, group: Group, status: str, key: str) -> None:
        from handlers.alerts import Alert

        units = group.units()
        policy = None
        for unit in [group.cause.unit, *units] if group.cause.unit else units:
            candidate = self._policy(unit, [])
            alerter = self.alerting.alerter_for(candidate)
            if alerter is not None and alerter.targets:
                policy = candidate
                break
        if policy is None:
            return
        now = self.clock.time()
        alert = Alert(
            unit=group.cause.unit or units[0],
            incident_id=group.id,
            level="group",
            status="resolved" if status == "resolved" else "firing",
            reason=group.cause.kind,
            summary=self._group_summary(group, key),
            attempts=len(units),
            started_at=self._group_walls.get(group.id, now),
            ended_at=now if status == "resolved" else None,
            host=self.host,
            labels={
                "group": group.id,
                "cause": group.cause.label,
                "cause_kind": group.cause.kind,
            },
            members=tuple(units),
        )
        self.alerting.send_group(policy, alert, key)

    @staticmethod
    def _group_summary(group: Group, key: str) -> str:
        cause = group.cause
        units = group.units()
        members = [u for u in units if u != cause.unit]
        if key == "opened":
            if cause.kind == "dependency":
                return (
                    f"{cause.unit} is down and {len(members)} unit(s) that need it failed "
                    f"with it: {listing(members)}. {cause.unit} is recovered first, then "
                    "its dependents, in dependency order"
                )
            return f"{len(units)} units failed with one cause ({cause.label}): {listing(units)}"
        if key == "":
            return f"{cause.label}: all {len(units)} unit(s) of the group are active again"
        gave_up = group.with_outcome(GAVE_UP)
        waiting = group.with_outcome(WAITING)
        parts = [f"{cause.label}: {len(gave_up) + len(waiting)} of {len(units)} unit(s) left down"]
        if gave_up:
            parts.append(f"gave up: {listing(gave_up)}")
        if waiting:
            parts.append(
                f"waiting for {cause.unit or cause.label}, not restarted: {listing(waiting)}"
            )
        recovered = group.with_outcome(RECOVERED)
        if recovered:
            parts.append(f"recovered: {len(recovered)}")
        return "; ".join(parts) + (
            f"; run `unitgen reset {cause.unit}` once it is fixed" if cause.unit else ""
        )
