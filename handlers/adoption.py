"""Adopting an incident whose owner died: where it stopped, and where it goes on.

A ladder run owns its unit's incident while it holds the unit's flock
(:mod:`handlers.locks`). The kernel releases that lock when the holder dies,
``kill -9`` included, so a run that has just taken the lock and finds the unit's
last incident still ``open`` has found an orphan: nobody is working on it. The
one exception is an incident a run left open on purpose, handing the unit to
systemd's own ``Restart=`` (its last step's result is ``systemd-restarting``):
the next failure continues that one the ordinary way.

What an orphan's history says, and what the adopting run does (state
``RESUMING`` of :mod:`handlers.ladder`):

* no ``restart`` row still marked ``started``: the owner died before its
  restart (diagnosing, checking, backing off). The run diagnoses again (the
  checks only look, and the world may have changed); the budget and the
  back-off are computed from the history as always, so the back-off waits only
  for what is left of its delay, measured from the previous attempt.
* a ``restart`` row marked ``started``: that attempt was counted before
  RestartUnit was called, and nobody saw it through. The unit tells whether the
  call was made: a start (``InactiveExitTimestamp``) after the row was written,
  or the unit active or starting now, means it was; then it is verified, never
  issued twice. The unit still failed with no start since: the call never
  reached systemd, so the same attempt is made now and not counted again. A
  start since, and failed again: that attempt failed; the ladder re-plans.

The invocation dedupe (one incident per InvocationID) must not stop this: the
restarted daemon and the ``OnFailure=`` fallback come with the InvocationID the
dead owner already recorded as handled. Adoption is checked first, and the
trigger is recorded as ``resumed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.diagnose import RESTARTING_SUBSTATES, invocation_hex, restart_reached
from handlers.ladder import Verdict
from handlers.store import AttemptRow, IncidentRow, Stamp, Store

__all__ = [
    "RESUMED",
    "Interrupted",
    "Unowned",
    "find_interrupted",
    "interrupted_of",
    "resume_verdict",
    "started_since",
    "unowned",
]

# The reason every adoption carries: in the "resume" history row, the StepFinished
# event's detail, the outcome's notes and the trigger row ("resumed").
RESUMED = "resumed after owner died"

# The result of a step that handed the unit to systemd on purpose: such an incident
# stays open without an owner and is continued by the next failure, not adopted.
_LEFT_TO_SYSTEMD = "systemd-restarting"


@dataclass(frozen=True)
class Interrupted:
    """An open incident nobody owns, and its restart that nobody saw through, if any."""

    incident: IncidentRow
    pending_restart: AttemptRow | None  # the last "restart" row, still "started"
    last_step: AttemptRow | None


def find_interrupted(store: Store, unit: str) -> Interrupted | None:
    """The unit's orphaned incident. Call only while holding the unit's lock."""
    return interrupted_of(store, store.last_incident(unit))


def interrupted_of(store: Store, last: IncidentRow | None) -> Interrupted | None:
    """``last`` (a unit's last incident, read under its lock) if it is orphaned."""
    if last is None or last.state != "open":
        return None
    rows = store.attempts(last.id)
    if _handed_to_systemd(rows):
        return None
    restart = next((r for r in reversed(rows) if r.action == "restart"), None)
    pending = restart if restart is not None and restart.result == "started" else None
    return Interrupted(last, pending, rows[-1] if rows else None)


@dataclass(frozen=True)
class Unowned:
    """The units whose last incident is open with no run working on it, by why.

    ``interrupted``: its owner died (lock not checked here); whoever takes the
    unit's lock adopts it. ``left_to_systemd``: handed to systemd's ``Restart=``
    on purpose; not an orphan (the next failure continues it), but if systemd's
    restart works no failure comes, and whoever sees the unit up closes it.
    """

    interrupted: list[str]
    left_to_systemd: list[str]


def unowned(store: Store) -> Unowned:
    """One pass over the open incidents: each unit's last incident and its steps read once."""
    interrupted: list[str] = []
    left: list[str] = []
    # Each unit with an open incident, once (its last incident may be another).
    for unit in dict.fromkeys(inc.unit for inc in store.open_incidents()):
        last = store.last_incident(unit)
        if last is None or last.state != "open":
            continue
        if _handed_to_systemd(store.attempts(last.id)):
            left.append(unit)
        else:
            interrupted.append(unit)
    return Unowned(interrupted, left)


def _handed_to_systemd(rows: list[AttemptRow]) -> bool:
    # Its last step gave the unit to systemd on purpose: not an orphan.
    return bool(rows) and rows[-1].result == _LEFT_TO_SYSTEMD


def started_since(props: Mapping[str, Any], at: Stamp, boot: str, invocation: str) -> bool | None:
    """Did the unit start after ``at``? None when systemd's answer does not say.

    ``InactiveExitTimestamp`` is when the unit last left inactive/failed, i.e. its
    last start: on the monotonic clock when ``at`` is from this boot (immune to
    wall-clock steps), else on the wall clock. Without timestamps (a unit that
    never started has 0), the unit still showing the incident's failed
    ``invocation`` means it did not start.
    """
    key, mark = (
        ("InactiveExitTimestampMonotonic", at.mono)
        if at.boot == boot
        else ("InactiveExitTimestamp", at.wall)
    )
    value = props.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value / 1e6 >= mark
    current = invocation_hex(props.get("InvocationID"))
    if invocation and current:
        return current != invocation
    if value == 0 and key in props:
        return False
    return None


def resume_verdict(
    interrupted: Interrupted, props: Mapping[str, Any], boot: str
) -> tuple[Verdict, str]:
    """Where the adopted incident goes on, from its history and the unit now."""
    if props.get("LoadState") == "not-found":
        return Verdict.NOT_FOUND, f"{RESUMED}; systemd no longer knows the unit"
    pending = interrupted.pending_restart
    if pending is None:
        step = interrupted.last_step.action if interrupted.last_step is not None else "diagnose"
        return Verdict.OK, f"{RESUMED} before its restart (last step recorded: {step})"
    active, sub = props.get("ActiveState"), props.get("SubState")
    if sub in RESTARTING_SUBSTATES:
        return (
            Verdict.SYSTEMD_RESTARTING,
            f"{RESUMED}; its restart was made, the unit crashed and systemd's Restart= has it",
        )
    if restart_reached(props):
        return Verdict.RESTART_UNVERIFIED, f"{RESUMED}; verifying its restart ({active}/{sub})"
    started = started_since(props, pending.at, boot, interrupted.incident.invocation_id)
    if started is False:
        return (
            Verdict.RESTART_NOT_MADE,
            f"{RESUMED} between counting its restart and making it; making it now",
        )
    # Started since (or unknown: then never a second restart for one counted attempt).
    return Verdict.FAILED, f"{RESUMED}; its restart was made and the unit is {active}/{sub}"
