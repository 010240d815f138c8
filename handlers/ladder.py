"""The recovery ladder as an explicit, pure state machine.

Nothing here touches systemd, the disk or the clock: the engine
(:mod:`handlers.recovery`) runs the action of the current :class:`State`,
reduces what it saw to a :class:`Verdict`, and asks :func:`transition` where to
go next. Every edge of the machine is one entry of :data:`TRANSITIONS`, with
the reason for it beside it, and every way of giving up carries a
:class:`GiveUp` reason. The budget arithmetic (window, decay, levels) lives
here too, as functions of plain numbers on an injected monotonic timeline, so
all of it is tested in microseconds with a fake clock.

The diagram (docs/recovery.md has the prose)::

    DIAGNOSING ──systemd restarting──▶ WAITING_FOR_SYSTEMD (stand down)
        │ ──already healthy──▶ NOT_NEEDED
        │ ──given up, not reset / budget spent──▶ GAVE_UP
        ▼ ok
    CHECKING_DEPENDENCIES ──dep down──▶ WAITING_FOR_DEPENDENCY ──back──▶ CHECKING_DEPENDENCIES
        │                                       └──still down──▶ GAVE_UP(dependency)
        ▼ ok (level CLEANUP_THEN_RESTART: via CLEANING_UP)
    CHECKING_RESOURCES ──disk low after freeing──▶ GAVE_UP(disk)
        ▼ ok
    VALIDATING_CONFIG ──invalid──▶ GAVE_UP(config)
        ▼ ok
    BACKING_OFF ──▶ RESTARTING ──job failed──▶ (retry or GAVE_UP(budget))
                        ▼ ok
                    VERIFYING ──active + healthy──▶ RECOVERED
                        └──not active or unhealthy──▶ DIAGNOSING (next level) or GAVE_UP

    With ``recovery.after_give_up = "park"`` an edge into GAVE_UP whose reason
    has a way back (:data:`PARKABLE`) goes to PARKED instead (:func:`park_instead`):
    the run ends, and handlers/parking.py resumes the unit later with a fresh run.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEPENDENCY_WAIT",
    "ENTRY_STATES",
    "JOIN_CAP",
    "MAX_DEPENDENCY_ROUNDS",
    "PARKABLE",
    "TRANSITIONS",
    "GiveUp",
    "Level",
    "State",
    "Transition",
    "Verdict",
    "attempts_in_window",
    "count_start",
    "level_budget",
    "level_for",
    "park_instead",
    "transition",
]

# The engine's waits, here so that the generator (unitgen.render sizes the recovery
# unit's timeout with them) can read them without loading the engine.
# How often CHECKING_DEPENDENCIES may send us back to WAITING_FOR_DEPENDENCY in one run.
MAX_DEPENDENCY_ROUNDS = 2
DEPENDENCY_WAIT = 30.0  # seconds a dependent waits for a dependency, per round
JOIN_CAP = 900.0  # longest a joining trigger waits for the running recovery


class State(enum.Enum):
    DIAGNOSING = "diagnosing"
    WAITING_FOR_SYSTEMD = "waiting-for-systemd"  # terminal: systemd restarts it itself
    NOT_NEEDED = "not-needed"  # terminal: the unit was already active and healthy
    CHECKING_DEPENDENCIES = "checking-dependencies"
    WAITING_FOR_DEPENDENCY = "waiting-for-dependency"
    CLEANING_UP = "cleaning-up"
    CHECKING_RESOURCES = "checking-resources"
    VALIDATING_CONFIG = "validating-config"
    BACKING_OFF = "backing-off"
    RESTARTING = "restarting"
    VERIFYING = "verifying"
    RECOVERED = "recovered"  # terminal
    GAVE_UP = "gave-up"  # terminal: the unit is left as it is until `unitgen reset`
    # terminal: like GAVE_UP, but the unit is retried slowly and at once when what it
    # waits for is back (handlers/parking.py); each retry is a fresh, bounded run.
    PARKED = "parked"
    # First state of a run that adopted an incident its owner left open (the owner
    # died: its flock is free). Decides where the incident goes on (handlers/adoption.py).
    RESUMING = "resuming"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


# Where a run begins: a new trigger at DIAGNOSING; a run that adopted an incident
# whose owner died at RESUMING.
ENTRY_STATES = frozenset({State.DIAGNOSING, State.RESUMING})

_TERMINAL = frozenset(
    {State.WAITING_FOR_SYSTEMD, State.NOT_NEEDED, State.RECOVERED, State.GAVE_UP, State.PARKED}
)


class Level(enum.IntEnum):
    """The escalation levels, in order; each is entered once the one before used its attempts."""

    RESTART = 1
    RESTART_WITH_DEPENDENCIES = 2
    CLEANUP_THEN_RESTART = 3
    ALERT_AND_STOP = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class GiveUp(enum.Enum):
    """Why the ladder stopped without recovering the unit (the ``reason`` everywhere)."""

    BUDGET = "budget"  # max_attempts restarts within the window were used
    DISK = "disk"  # too little space or inodes even after freeing what we may
    CONFIG = "config"  # the declared validate command failed
    DEPENDENCY = "dependency"  # a dependency stayed down for the whole bounded wait
    GIVEN_UP = "given-up"  # an earlier incident gave up and nobody ran `unitgen reset`
    NOT_FOUND = "not-found"  # systemd no longer knows the unit
    UNCOUNTED = "uncounted"  # neither the history nor the run-dir ledger can keep the count


class Verdict(enum.Enum):
    """What the action of a state found, reduced to what decides the next state."""

    OK = "ok"
    SYSTEMD_RESTARTING = "systemd-restarting"
    HEALTHY = "healthy"
    GIVEN_UP = "given-up"
    BUDGET_SPENT = "budget-spent"
    NOT_FOUND = "not-found"
    DEPENDENCY_DOWN = "dependency-down"
    DEPENDENCY_BACK = "dependency-back"
    DEPENDENCY_STILL_DOWN = "dependency-still-down"
    CLEANUP_NEXT = "cleanup-next"  # dependencies fine and the level wants a cleanup first
    DISK_LOW = "disk-low"
    CONFIG_INVALID = "config-invalid"
    FAILED = "failed"  # the restart job or the verification failed: one attempt used
    UNCOUNTED = "uncounted"  # no restart can be counted anywhere that outlives this process
    # RESUMING: the restart the dead owner recorded reached systemd; see whether it worked.
    RESTART_UNVERIFIED = "restart-unverified"
    # RESUMING: the restart was recorded (counted) but never reached systemd: make it now.
    RESTART_NOT_MADE = "restart-not-made"


@dataclass(frozen=True)
class Transition:
    target: State
    give_up: GiveUp | None = None
    # True when this edge used up the attempt: the engine re-plans the level.
    attempt_failed: bool = False


# The whole machine. Key: (state, verdict). Each edge says why it exists.
TRANSITIONS: dict[tuple[State, Verdict], Transition] = {
    # Diagnosis read the unit and the incident's budget.
    # SubState auto-restart (or failed-before-auto-restart, or a queued start job):
    # systemd is already restarting it, so acting too would be a second actor.
    (State.DIAGNOSING, Verdict.SYSTEMD_RESTARTING): Transition(State.WAITING_FOR_SYSTEMD),
    # The unit is active and (for a health trigger) its probe passes: a stale trigger.
    (State.DIAGNOSING, Verdict.HEALTHY): Transition(State.NOT_NEEDED),
    # An earlier incident gave up and nobody re-armed it: no new attempts, no new alert.
    (State.DIAGNOSING, Verdict.GIVEN_UP): Transition(State.GAVE_UP, GiveUp.GIVEN_UP),
    # max_attempts restarts already happened within the window: stop, alert once.
    (State.DIAGNOSING, Verdict.BUDGET_SPENT): Transition(State.GAVE_UP, GiveUp.BUDGET),
    # Neither the history database nor the run-dir ledger can be written: a restart
    # would not be counted, and an uncounted budget is a restart storm. Fail safe.
    (State.DIAGNOSING, Verdict.UNCOUNTED): Transition(State.GAVE_UP, GiveUp.UNCOUNTED),
    # The unit vanished (unit file removed): nothing to restart.
    (State.DIAGNOSING, Verdict.NOT_FOUND): Transition(State.GAVE_UP, GiveUp.NOT_FOUND),
    # A real failure with budget left: dependencies come before any restart.
    (State.DIAGNOSING, Verdict.OK): Transition(State.CHECKING_DEPENDENCIES),
    # All dependencies active (failed ones were recovered by their own ladders first).
    (State.CHECKING_DEPENDENCIES, Verdict.OK): Transition(State.CHECKING_RESOURCES),
    # A dependency was brought back and the unit came back with it (systemd's Restart=,
    # socket activation): restarting it a second time would only interrupt it.
    (State.CHECKING_DEPENDENCIES, Verdict.HEALTHY): Transition(State.NOT_NEEDED),
    # Same, but the level is CLEANUP_THEN_RESTART: clean before checking space.
    (State.CHECKING_DEPENDENCIES, Verdict.CLEANUP_NEXT): Transition(State.CLEANING_UP),
    # A dependency is down and its ladder could not bring it back yet: wait, do not restart.
    (State.CHECKING_DEPENDENCIES, Verdict.DEPENDENCY_DOWN): Transition(
        State.WAITING_FOR_DEPENDENCY
    ),
    # The dependency came back during the bounded wait: check all of them again.
    (State.WAITING_FOR_DEPENDENCY, Verdict.DEPENDENCY_BACK): Transition(
        State.CHECKING_DEPENDENCIES
    ),
    # It stayed down for the whole wait: restarting the dependent would only fail again.
    (State.WAITING_FOR_DEPENDENCY, Verdict.DEPENDENCY_STILL_DOWN): Transition(
        State.GAVE_UP, GiveUp.DEPENDENCY
    ),
    # Stale PID file and old temp files are gone (or were refused and recorded).
    (State.CLEANING_UP, Verdict.OK): Transition(State.CHECKING_RESOURCES),
    # Space, inodes and memory are fine (low memory is alerted, not blocking).
    (State.CHECKING_RESOURCES, Verdict.OK): Transition(State.VALIDATING_CONFIG),
    # Still short of space after freeing the declared cleanup dirs: it would crash again.
    (State.CHECKING_RESOURCES, Verdict.DISK_LOW): Transition(State.GAVE_UP, GiveUp.DISK),
    # The validate command passed, or none is declared.
    (State.VALIDATING_CONFIG, Verdict.OK): Transition(State.BACKING_OFF),
    # A restart with a broken config fails or, worse, serves garbage: stop here.
    (State.VALIDATING_CONFIG, Verdict.CONFIG_INVALID): Transition(State.GAVE_UP, GiveUp.CONFIG),
    # The pause since the previous attempt is over.
    (State.BACKING_OFF, Verdict.OK): Transition(State.RESTARTING),
    # Both stores failed between diagnosis and the restart: the same fail-safe stop.
    (State.RESTARTING, Verdict.UNCOUNTED): Transition(State.GAVE_UP, GiveUp.UNCOUNTED),
    # ResetFailedUnit + RestartUnit were accepted: see whether it comes up.
    (State.RESTARTING, Verdict.OK): Transition(State.VERIFYING),
    # systemd refused the restart job: that was an attempt; re-plan from a fresh diagnosis.
    (State.RESTARTING, Verdict.FAILED): Transition(State.DIAGNOSING, attempt_failed=True),
    # Active within start_timeout and the health probe passes.
    (State.VERIFYING, Verdict.OK): Transition(State.RECOVERED),
    # Not active in time, or unhealthy: that attempt failed; re-diagnose at the next level.
    (State.VERIFYING, Verdict.FAILED): Transition(State.DIAGNOSING, attempt_failed=True),
    # systemd took over again (its own Restart= after our start): let it, stand down.
    (State.VERIFYING, Verdict.SYSTEMD_RESTARTING): Transition(
        State.WAITING_FOR_SYSTEMD, attempt_failed=True
    ),
    # An adopted incident whose owner died before its restart (diagnosis, checks,
    # back-off): run them again on the unit as it is now; the budget and the back-off
    # deadline come from the history, so nothing is counted or waited twice.
    (State.RESUMING, Verdict.OK): Transition(State.DIAGNOSING),
    # The dead owner's restart reached systemd (the unit started after it was
    # recorded, or is starting): verify it, never issue it a second time.
    (State.RESUMING, Verdict.RESTART_UNVERIFIED): Transition(State.VERIFYING),
    # Recorded and counted, then the owner died before RestartUnit: make that same
    # attempt now (it is not counted again).
    (State.RESUMING, Verdict.RESTART_NOT_MADE): Transition(State.RESTARTING),
    # The dead owner's restart was made and the unit failed again meanwhile: that
    # attempt is used; re-plan from a fresh diagnosis.
    (State.RESUMING, Verdict.FAILED): Transition(State.DIAGNOSING, attempt_failed=True),
    # It crashed after the dead owner's restart and systemd's Restart= has it.
    (State.RESUMING, Verdict.SYSTEMD_RESTARTING): Transition(
        State.WAITING_FOR_SYSTEMD, attempt_failed=True
    ),
    # The unit vanished while nobody owned its incident.
    (State.RESUMING, Verdict.NOT_FOUND): Transition(State.GAVE_UP, GiveUp.NOT_FOUND),
}


class InvalidTransitionError(RuntimeError):
    """The engine produced a verdict the current state cannot handle: a bug."""


def transition(state: State, verdict: Verdict) -> Transition:
    try:
        return TRANSITIONS[(state, verdict)]
    except KeyError:
        raise InvalidTransitionError(
            f"no transition from {state.value} on {verdict.value}"
        ) from None


# --- parking instead of giving up ----------------------------------------------------

# The give-up reasons a parked unit can come back from, each with what it waits for.
# The others have no way back worth waiting for: GIVEN_UP is an earlier "stop" nobody
# re-armed, NOT_FOUND has no unit to start, UNCOUNTED could not count the retries.
PARKABLE: dict[GiveUp, str] = {
    # A dependency stayed down through the bounded wait: wait for it to be active
    # (its PropertiesChanged) or its probe to pass, not for ever and not in a loop.
    GiveUp.DEPENDENCY: "dependency",
    # Too little space even after freeing: wait for the disk check to pass again.
    GiveUp.DISK: "disk",
    # The budget is spent: the window frees attempts with time; a health probe
    # passing again (a unit active but unhealthy) ends it sooner.
    GiveUp.BUDGET: "budget",
    # The validate command failed: an operator's fix is seen at the next retry.
    GiveUp.CONFIG: "config",
}


def park_instead(t: Transition, mode: str | None) -> Transition:
    """The edge the run takes when the unit's ``after_give_up`` is ``mode``.

    ``mode`` is already resolved ("stop" or "park"; see :func:`after_give_up_mode`).
    Only an edge into GAVE_UP with a parkable reason changes: to PARKED, with the
    same reason (what it waits for follows from it) and the same attempt accounting.
    """
    if mode != "park" or t.target is not State.GAVE_UP or t.give_up not in PARKABLE:
        return t
    return Transition(State.PARKED, t.give_up, t.attempt_failed)


def after_give_up_mode(configured: str | None, *, has_dependency: bool, has_probe: bool) -> str:
    """``recovery.after_give_up`` as written, or its default: "park" for a unit that
    has something to wait for (a dependency, or a health probe), else "stop"."""
    if configured in ("stop", "park"):
        return configured
    return "park" if has_dependency or has_probe else "stop"


# --- the budget: window, decay, levels ------------------------------------------------


def count_start(
    now: float,
    *,
    window: float,
    stable_after: float,
    last_attempt_at: float | None,
    reset_at: float | None,
) -> float:
    """The moment after which restart attempts count, on the monotonic timeline.

    Attempts older than ``window`` never count. If the unit then ran for
    ``stable_after`` since the last attempt without needing another, it starts
    afresh: systemd's RestartSteps never forgets (systemd#43813), this ladder
    does. ``unitgen reset`` (``reset_at``) also starts afresh.
    """
    start = now - window
    if reset_at is not None:
        start = max(start, reset_at)
    if last_attempt_at is not None and now - last_attempt_at >= stable_after:
        # Stable for long enough: that attempt and every earlier one are forgiven.
        start = max(start, last_attempt_at)
    return start


def attempts_in_window(attempt_times: Iterable[float], since: float) -> int:
    """How many restart attempts happened strictly after ``since``."""
    return sum(1 for t in attempt_times if t > since)


def level_budget(max_attempts: int) -> tuple[int, int, int]:
    """Attempts per restarting level (RESTART, WITH_DEPENDENCIES, CLEANUP), summing to max.

    Split as evenly as possible, earlier levels first: 5 -> (2, 2, 1), 1 -> (1, 0, 0).
    A level with no attempts is skipped.
    """
    n = max(0, max_attempts)
    base, extra = divmod(n, 3)
    return (base + (extra > 0), base + (extra > 1), base)


def level_for(attempts_used: int, max_attempts: int) -> Level:
    """The level of the next attempt, given how many were used in the window."""
    used = max(0, attempts_used)
    total = 0
    for level, budget in zip(
        (Level.RESTART, Level.RESTART_WITH_DEPENDENCIES, Level.CLEANUP_THEN_RESTART),
        level_budget(max_attempts),
        strict=True,
    ):
        total += budget
        if used < total:
            return level
    return Level.ALERT_AND_STOP
