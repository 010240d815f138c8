"""The engine's records: what a caller passes in and gets back, and one run's context.

:class:`Trigger` and :class:`Outcome` are the public API (the listener, the
command line and the D-Bus API use them); :class:`Run` is the mutable context
of one ladder run, shared by the steps (:mod:`.steps`) and the end of the run
(:mod:`.finish`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from handlers.ladder import GiveUp, Level, State

if TYPE_CHECKING:
    from handlers import adoption
    from handlers.alerts import Alerter
    from handlers.bus import Expectation
    from handlers.diagnose import Diagnosis
    from handlers.events import Event
    from handlers.parking import ParkedUnit
    from handlers.store import AttemptRow, IncidentRow, Stamp
    from unitgen.model import Probe
    from unitgen.policy import Policy

TriggerSource = Literal[
    "onfailure", "listener", "health", "manual", "reconcile", "dependency", "parked"
]
# The triggers a listener makes itself: their Outcome is logged as one line, never shown.
# ("parked": a parked unit's retry, handlers/parking.py.)
LISTENER_SOURCES: frozenset[str] = frozenset(
    {"listener", "health", "reconcile", "dependency", "parked"}
)
LockMode = Literal["join", "drop"]


class Clock(Protocol):
    """Injected time: monotonic for arithmetic, wall for records, and sleeping."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Trigger:
    """Why recovery was asked for, and systemd's account of the failure if there is one."""

    source: TriggerSource
    invocation_id: str = ""
    result: str = ""  # $MONITOR_SERVICE_RESULT: exit-code, signal, start-limit-hit, ...
    exit_code: str = ""  # $MONITOR_EXIT_CODE: exited, killed, dumped
    exit_status: str = ""  # $MONITOR_EXIT_STATUS: a number or a signal name
    reason: str = ""  # free text, e.g. the failing health probe
    # The listener's account of the unit at the failure (the properties the
    # diagnosis reads, from systemd's signals), so diagnose makes no read of its own.
    snapshot: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # The caller saw the unit still failed after systemd would have set auto-restart:
    # settle() has nothing to wait for.
    settled: bool = False

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], source: TriggerSource = "onfailure"
    ) -> Trigger:
        return cls(
            source=source,
            invocation_id=env.get("MONITOR_INVOCATION_ID", "")[:64],
            result=env.get("MONITOR_SERVICE_RESULT", "")[:64],
            exit_code=env.get("MONITOR_EXIT_CODE", "")[:64],
            exit_status=env.get("MONITOR_EXIT_STATUS", "")[:64],
        )


@dataclass(frozen=True)
class Outcome:
    unit: str
    state: State
    reason: str
    attempts: int  # restart attempts counted in the current window, after this run
    incident_id: str
    level: Level = Level.RESTART
    classification: str = ""
    restarts: int = 0  # RestartUnit calls made by this run
    joined: bool = False  # another recovery of this unit ran; this is its outcome
    dropped: bool = False  # another recovery was running and lock_mode is "drop"
    dry_run: bool = False
    default_policy: bool = False
    duration: float = 0.0
    notes: tuple[str, ...] = ()
    journal: tuple[str, ...] = ()
    waiting_for: tuple[str, ...] = ()  # a parked unit's dependencies, probes, disk

    @property
    def ok(self) -> bool:
        return self.state in (State.RECOVERED, State.NOT_NEEDED, State.WAITING_FOR_SYSTEMD)

    def to_dict(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "state": self.state.value,
            "reason": self.reason,
            "attempts": self.attempts,
            "incident_id": self.incident_id,
            "level": self.level.label,
            "classification": self.classification,
            "restarts": self.restarts,
            "joined": self.joined,
            "dropped": self.dropped,
            "dry_run": self.dry_run,
            "default_policy": self.default_policy,
            "duration": round(self.duration, 6),
            "notes": list(self.notes),
            "journal": list(self.journal),
            "waiting_for": list(self.waiting_for),
        }


ProbeRunner = Callable[["Probe", int], Awaitable[tuple[bool, str]]]
AlerterFactory = Callable[["Policy"], "Alerter | None"]


@dataclass
class RestartCall:
    """The run's restart of the unit: what verify needs of it, and what must be let go."""

    expected: Expectation | None = None  # the bus's account of the restart's changes
    pinned: bool = False  # RefUnit sent with the restart; UnrefUnit once it is seen through
    # How long the last restart's calls took; written with the attempt's result.
    took: float | None = None
    # The next restart makes the adopted incident's counted attempt (its dead owner
    # counted it and died before making it) instead of counting a new one.
    reissue: bool = False
    # The invocation verify waits to see replaced; None: the diagnosed one. "" when
    # the unit is already past the failed run (an adopted restart being verified).
    replaced_invocation: str | None = None


@dataclass
class Run:
    """The mutable context of one ladder run for one unit."""

    unit: str
    policy: Policy
    trigger: Trigger
    visited: set[str]
    started: float
    incident: IncidentRow | None = None
    level: Level = Level.RESTART
    used: int = 0  # restart attempts counted in the window
    last_attempt_at: float | None = None
    restarts: int = 0
    dependency_rounds: int = 0
    waiting_on: tuple[str, ...] = ()
    diagnosis: Diagnosis | None = None
    detail: str = ""  # the last action's one-line account
    # Why the ladder gave up, from the edge into GAVE_UP; the outcome's text is
    # derived from it once the run ends (handlers/recovery/finish.py).
    give_up: GiveUp | None = None
    reason: str = ""  # the outcome's reason, set at the end
    notes: list[str] = field(default_factory=list)
    journal_task: asyncio.Task[tuple[str, ...]] | None = None
    rows: list[AttemptRow] = field(default_factory=list)  # steps not yet written
    active_at: Stamp | None = None  # when verification last saw it active and healthy
    # Events made before RestartUnit wait here (timestamped when made, delivered in
    # order right after the call): the sinks' work must not delay the restart.
    # None once delivered: from then on events go straight out.
    held: list[Event] | None = field(default_factory=list)
    # The trigger's snapshot, for the first diagnosis only; later ones read systemd.
    snapshot: Mapping[str, Any] | None = None
    from_snapshot: bool = False  # the current diagnosis came from it (no ControlGroup)
    # The unit's last incident as read on entry (under the unit's lock, so current
    # until this run opens one): adoption and the first diagnosis share the read.
    previous: IncidentRow | None = None
    before: dict[str, Any] = field(default_factory=dict)  # Unit state the diagnosis saw
    call: RestartCall = field(default_factory=RestartCall)
    # Set when this run adopted an incident whose owner died (handlers/adoption.py).
    resumed: adoption.Interrupted | None = None
    # Incident groups (handlers/correlation.py): the group this unit joined, whether it
    # holds one of the group's restart slots, whether a dependency was brought back
    # during this run (so the unit may be back by itself), and dependencies whose own
    # ladder gave up (nothing to wait for).
    group: str = ""
    slot: bool = False
    dependency_back: bool = False
    dependencies_gave_up: tuple[str, ...] = ()
    # Set when this run ended parked (handlers/recovery/parked.py).
    parked: ParkedUnit | None = None
    unparked: bool = False  # this run continued a parked incident

    @property
    def incident_id(self) -> str:
        return self.incident.id if self.incident is not None else ""


# The Unit-interface state verify starts from when it applies the restart's changes.
# What verification compares against: the last start's time tells a unit that was
# inactive before the restart from one the restart started and that stopped again.
UNIT_STATE = ("ActiveState", "SubState", "InvocationID", "Job", "InactiveExitTimestampMonotonic")
