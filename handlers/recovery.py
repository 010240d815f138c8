"""The recovery engine: runs the ladder of :mod:`handlers.ladder` with real side effects.

This is the Python API both entry points use, so they share one state (the
SQLite store at ``Paths.database``) and one set of locks (``Paths.lock_dir``):

* ``unitgen recover UNIT`` (the OnFailure= unit) builds an engine, calls
  :meth:`RecoveryEngine.recover` once and :meth:`RecoveryEngine.aclose`.
* The listener keeps one engine for its lifetime and calls ``recover`` for
  each failure, ``reset``/``status``/``history`` for its D-Bus methods.

The engine only performs actions and reduces their results to a
:class:`~handlers.ladder.Verdict`; which state follows is decided by
:func:`handlers.ladder.transition` alone. Every step is recorded (time, level,
action, result, reason, duration) and emitted as an event. Alerts are fired as
tasks the engine keeps strong references to, and :meth:`aclose` waits for
them (bounded) so a short-lived CLI process does not lose them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

# resources at import time, not on the first failure: every incident uses it, and
# importing it cost the first recovery ~5 ms of CPU before its restart.
from handlers import adoption, backoff, ladder, resources
from handlers.diagnose import (
    RESTARTING_SUBSTATES,
    Diagnosis,
    SystemdClient,
    diagnosis_from,
    job_queued,
    read_journal,
    restart_pending,
    settle,
)
from handlers.events import Event, EventKind, EventSink, FieldValue, NullSink
from handlers.ladder import (
    DEPENDENCY_WAIT,
    JOIN_CAP,
    MAX_DEPENDENCY_ROUNDS,
    GiveUp,
    Level,
    State,
    Verdict,
)
from handlers.ledger import Entry, Ledger
from handlers.locks import UnitLock, check_unit_name
from handlers.store import AttemptRow, IncidentRow, Stamp, Store, UnitSummary, boot_id
from unitgen.errors import PolicyError, SystemdError, UnitNotFoundError
from unitgen.model import Probe
from unitgen.paths import Paths, Scope
from unitgen.policy import Policy, default_policy, load_policy

if TYPE_CHECKING:
    import random

    from handlers.alerts import Alert, Alerter, Delivery
    from handlers.testhook import PausePoint

__all__ = [
    "LISTENER_SOURCES",
    "Clock",
    "LockMode",
    "Outcome",
    "RecoveryEngine",
    "SystemClock",
    "Trigger",
    "TriggerSource",
]

log = logging.getLogger(__name__)

TriggerSource = Literal["onfailure", "listener", "health", "manual", "reconcile", "dependency"]
# The triggers a listener makes itself: their Outcome is logged as one line, never shown.
LISTENER_SOURCES: frozenset[str] = frozenset({"listener", "health", "reconcile", "dependency"})
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
        }


ProbeRunner = Callable[[Probe, int], Awaitable[tuple[bool, str]]]
AlerterFactory = Callable[[Policy], "Alerter | None"]


@dataclass
class _Run:
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
    reason: str = ""
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
    before: dict[str, Any] = field(default_factory=dict)  # Unit state the diagnosis saw
    expected: Any = None  # the bus's Expectation of the restart's changes, if any
    pinned: bool = False  # RefUnit sent with the restart; UnrefUnit once it is seen through
    # How long the last restart's calls took; written with the attempt's result.
    restart_took: float | None = None
    # Set when this run adopted an incident whose owner died (handlers/adoption.py).
    resumed: adoption.Interrupted | None = None
    # RESTARTING makes the dead owner's counted attempt instead of counting a new one.
    reissue: bool = False
    # The invocation verify waits to see replaced; None: the diagnosed one. "" when
    # the unit is already past the failed run (an adopted restart being verified).
    replaced_invocation: str | None = None

    @property
    def incident_id(self) -> str:
        return self.incident.id if self.incident is not None else ""


class RecoveryEngine:
    """Runs the ladder for units of one systemd manager."""

    def __init__(
        self,
        bus: SystemdClient,
        paths: Paths,
        *,
        events: EventSink | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        alerter_factory: AlerterFactory | None = None,
        lock_mode: LockMode = "join",
        dry_run: bool = False,
        store: Store | None = None,
        probe_runner: ProbeRunner | None = None,
        read_journal_lines: bool = True,
        journal_skip: frozenset[str] = frozenset(),
        host: str | None = None,
        watch_uptime: bool = False,
    ) -> None:
        """``watch_uptime``: verify also waits ``min_uptime`` for the unit to stay up.

        The OnFailure= process sets it: a crash within min_uptime then continues the
        ladder in the same process (systemd merges the OnFailure= start job into the
        still-running recovery unit, so no second process would come). The listener
        leaves it off and sees the next failure itself; its "resolved" alert is sent
        once the unit has been up for min_uptime.

        ``journal_skip``: trigger sources whose outcome nobody reads (the listener's
        own triggers), so no ``journalctl`` is started for them: a process per
        incident is most of the daemon's CPU when many units fail at once.
        """
        self.bus = bus
        self.paths = paths
        self.events: EventSink = events if events is not None else NullSink()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng
        self.lock_mode: LockMode = lock_mode
        self.dry_run = dry_run
        self._alerter_factory = alerter_factory if alerter_factory is not None else _alerter
        self._probe = probe_runner if probe_runner is not None else _probe
        self._read_journal = read_journal_lines
        self._journal_skip = journal_skip
        self.watch_uptime = watch_uptime
        self._deferred: set[asyncio.Task[None]] = set()
        self.host = host if host is not None else os.uname().nodename
        self._boot = boot_id()
        if store is not None:
            self.store = store
        elif dry_run:
            # A dry run must not leave traces: it reads the real history, writes nowhere.
            self.store = _readonly_copy(paths)
        else:
            self.store = Store.open(paths.database)
        # The budget's second memory, outside the state filesystem (handlers/ledger.py).
        self.ledger = Ledger(paths.run_dir / "ledger", readonly=dry_run)
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._queued: list[tuple[Alerter, Alert, str]] = []
        self._policies: dict[str, tuple[tuple[int, ...], Policy]] = {}
        self._alerters: dict[str, Alerter | None] = {}
        self._checkpointing: asyncio.Future[None] | None = None
        self._pause = _test_pause()

    @property
    def rng(self) -> random.Random:
        # Created on first use: `random` costs start-up time the first attempt never needs.
        if self._rng is None:
            import random

            self._rng = random.Random()  # noqa: S311 -- jitter, not cryptography
        return self._rng

    # --- public API ---------------------------------------------------------------------

    async def recover(self, unit: str, trigger: Trigger) -> Outcome:
        """Run the ladder for ``unit`` (or join the one running) and return how it ended."""
        check_unit_name(unit)
        running = self._running.get(unit)
        if running is not None:
            return await self._join_in_process(unit, trigger, running)
        task = asyncio.create_task(self._locked(unit, trigger, set()), name=f"recover {unit}")
        self._running[unit] = task
        try:
            return await task
        finally:
            if self._running.get(unit) is task:
                del self._running[unit]
            self._checkpoint_soon()

    def _checkpoint_soon(self) -> None:
        """Checkpoint the history's log in a thread, after a run, never inside one."""
        if self._checkpointing is not None or not self.store.checkpoint_due():
            return
        self.store.commits = 0
        task = asyncio.ensure_future(asyncio.to_thread(self.store.checkpoint))
        task.set_name("history checkpoint")
        self._checkpointing = task

        def done(t: asyncio.Future[None]) -> None:
            self._checkpointing = None
            if not t.cancelled() and t.exception() is not None:
                log.error("history checkpoint failed", exc_info=t.exception())

        task.add_done_callback(done)

    async def reset(self, unit: str) -> Outcome:
        """Re-arm ``unit``: counts start afresh; "resolved" goes out if it is healthy now."""
        check_unit_name(unit)
        now = self._stamp()
        props = await self._properties(unit)
        if props.get("LoadState") == "not-found":
            raise UnitNotFoundError(f"unit {unit}: systemd has no such unit")
        self.store.set_reset(unit, now)
        ledger_ok = self.ledger.reset(unit, now)
        if props.get("ActiveState") == "failed" and not self.dry_run:
            # Clears systemd's start-limit counter too, re-arming its own restarts.
            await self.bus.reset_failed(unit)
        last = self.store.last_incident(unit)
        notes: list[str] = []
        healthy = props.get("ActiveState") == "active"
        if last is not None:
            self.store.record_attempt(
                last.id,
                unit,
                at=now,
                level=last.level,
                action="reset",
                result="ok",
                reason="re-armed by unitgen reset",
            )
            if last.state == "open":
                self.store.close_incident(last.id, state="reset", reason="re-armed", at=now)
            if healthy:
                await self._resolve_reset(unit, self._policy(unit, notes))
        if self.store.note:
            notes.append(self.store.note)
        if not ledger_ok and not self.dry_run:
            notes.append(f"restart ledger not cleared: {self.ledger.problem}")
        state = State.NOT_NEEDED if healthy else State.DIAGNOSING
        reason = (
            "re-armed; unit is active"
            if healthy
            else (f"re-armed; unit is {props.get('ActiveState', 'unknown')}: start it to recover")
        )
        return Outcome(unit, state, reason, 0, last.id if last else "", notes=tuple(notes))

    def status(self, unit: str | None = None) -> list[dict[str, object]]:
        if unit is not None:
            units = [check_unit_name(unit)]
        else:
            # With the history degraded, the ledger may be all that knows a unit.
            units = sorted({*self.store.units(), *self.ledger.units()})
        now = self._stamp()
        gap = history_gap(self.store, self.ledger, self.clock.time())
        out: list[dict[str, object]] = []
        for name in units:
            notes: list[str] = []
            policy = self._policy(name, notes)
            summary = self.store.summary(name)
            used, _last = self._budget(name, policy, now)
            given_up = self._given_up(name, now, self.store.last_incident(name)) is not None
            out.append(
                {
                    "unit": name,
                    "state": "gave-up (run unitgen reset)" if given_up else summary.state,
                    "attempts_in_window": used,
                    "max_attempts": policy.recovery.max_attempts,
                    "window": policy.recovery.window,
                    "last_failure_reason": _failure_reason(summary),
                    "incidents": summary.incidents,
                    "mttr": summary.mttr,
                    "success_rate": summary.success_rate,
                    "default_policy": policy.default,
                    "history_degraded_since": gap[0] if gap else None,
                    "history_degraded_reason": gap[1] if gap else "",
                    "notes": notes + ([self.store.note] if self.store.note else []),
                }
            )
        return out

    def history(self, unit: str, limit: int = 50) -> list[dict[str, object]]:
        check_unit_name(unit)
        out: list[dict[str, object]] = []
        for inc in self.store.incidents(unit, limit):
            out.append(
                {
                    "incident_id": inc.id,
                    "source": inc.source,
                    "classification": inc.classification,
                    "state": inc.state,
                    "reason": inc.reason,
                    "level": Level(min(max(inc.level, 1), 4)).label,
                    "opened": inc.opened.wall,
                    "closed": inc.closed.wall if inc.closed else None,
                    "attempts": [
                        {
                            "time": a.at.wall,
                            "level": Level(min(max(a.level, 1), 4)).label,
                            "action": a.action,
                            "result": a.result,
                            "reason": a.reason,
                            "duration": round(a.duration, 6),
                        }
                        for a in self.store.attempts(inc.id)
                    ],
                }
            )
        return out

    def interrupted_units(self) -> list[str]:
        """Units with an incident whose owner died: open, not ours, and its lock free.

        The listener asks at every reconciliation (its own start after a ``kill -9``
        included) and recovers each, which adopts the incident: a unit whose dead
        owner's restart already brought it up is not failed, so nothing else would.
        """
        found: list[str] = []
        for unit in adoption.interrupted_units(self.store):
            if unit in self._running:
                continue
            lock = UnitLock(self.paths.lock_dir, unit)
            if lock.try_acquire():
                lock.release()
                found.append(unit)
        return found

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait (bounded) for alerts still being sent, then close the store."""
        if self._checkpointing is not None:
            # A thread cannot be cancelled; a PASSIVE checkpoint is short.
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        for task in list(self._deferred):
            task.cancel()
        if self._deferred:
            await asyncio.gather(*self._deferred, return_exceptions=True)
        self._flush_alerts()
        if self._pending:
            bound = timeout
            if bound is None:
                bound = (
                    max(
                        (a.time_bound() for a in self._alerters.values() if a is not None),
                        default=0.0,
                    )
                    + 1.0
                )
            _done, not_done = await asyncio.wait(set(self._pending), timeout=bound)
            for task in not_done:
                log.warning("alert still unsent at exit; abandoned (%s)", task.get_name())
                task.cancel()
            if not_done:
                await asyncio.gather(*not_done, return_exceptions=True)
        self.store.close()

    # --- locking and joining ------------------------------------------------------------

    async def _join_in_process(
        self, unit: str, trigger: Trigger, running: asyncio.Task[Outcome]
    ) -> Outcome:
        if self.lock_mode == "drop":
            self._record_trigger("", unit, trigger, "dropped")
            return Outcome(
                unit,
                State.DIAGNOSING,
                "another recovery is running; trigger dropped",
                0,
                "",
                dropped=True,
            )
        outcome = await asyncio.shield(running)
        self._record_trigger(outcome.incident_id, unit, trigger, "joined")
        return dataclasses.replace(outcome, joined=True, restarts=0)

    async def _locked(self, unit: str, trigger: Trigger, visited: set[str]) -> Outcome:
        lock = UnitLock(self.paths.lock_dir, unit)
        if not lock.try_acquire():
            return await self._join_other_process(unit, trigger, lock)
        try:
            return await self._ladder(unit, trigger, visited)
        finally:
            lock.release()

    async def _join_other_process(self, unit: str, trigger: Trigger, lock: UnitLock) -> Outcome:
        notes: list[str] = []
        policy = self._policy(unit, notes)
        if self.lock_mode == "drop":
            last = self.store.last_incident(unit)
            self._record_trigger(last.id if last else "", unit, trigger, "dropped")
            return Outcome(
                unit,
                State.DIAGNOSING,
                "another process is recovering it; trigger dropped",
                0,
                last.id if last else "",
                dropped=True,
                default_policy=policy.default,
            )
        r = policy.recovery
        bound = min(JOIN_CAP, r.max_attempts * (r.backoff.max + r.start_timeout) + 30.0)
        if trigger.source == "dependency":
            # A dependent waits for its dependency's recovery only as long as it would
            # wait for the dependency itself; two processes recovering a cycle from
            # both ends must not hold each other for the full ladder.
            bound = min(bound, DEPENDENCY_WAIT)
        released = await lock.wait_released(bound)
        last = self.store.last_incident(unit)
        incident_id = last.id if last else ""
        self._record_trigger(incident_id, unit, trigger, "joined" if released else "join-timeout")
        used, _ = self._budget(unit, policy, self._stamp())
        if not released:
            return Outcome(
                unit,
                State.DIAGNOSING,
                f"another recovery still running after {bound:g}s",
                used,
                incident_id,
                joined=True,
                default_policy=policy.default,
            )
        state, reason = _state_of(last)
        return Outcome(
            unit,
            state,
            reason,
            used,
            incident_id,
            level=Level(min(max(last.level, 1), 4)) if last else Level.RESTART,
            classification=last.classification if last else "",
            joined=True,
            default_policy=policy.default,
            notes=tuple(notes),
        )

    # --- the ladder ---------------------------------------------------------------------

    async def _ladder(self, unit: str, trigger: Trigger, visited: set[str]) -> Outcome:
        visited.add(unit)
        notes: list[str] = []
        policy = self._policy(unit, notes)
        run = _Run(
            unit,
            policy,
            trigger,
            visited,
            self.clock.monotonic(),
            notes=notes,
            snapshot=trigger.snapshot,
        )
        if policy.default:
            notes.append(f"{unit} has no recovery policy; using the defaults")
        if self.store.note:
            notes.append(self.store.note)
        # We hold the unit's lock: an open incident is one whose owner died. It is
        # adopted before the dedupe, which would call its own InvocationID a duplicate.
        interrupted = adoption.find_interrupted(self.store, unit)
        if interrupted is not None:
            self._adopt(run, interrupted)
            state = State.RESUMING
        else:
            duplicate = self.store.handled_invocation(unit, trigger.invocation_id)
            if duplicate is not None:
                inc = self.store.incident(duplicate)
                self._record_trigger(duplicate, unit, trigger, "duplicate")
                state, reason = _state_of(inc)
                return self._outcome(run, state, f"invocation already handled: {reason}")
            state = State.DIAGNOSING
        try:
            while not state.terminal:
                if self.dry_run and state is State.RESTARTING:
                    run.reason = "dry run: would reset-failed and restart"
                    self._record_step(run, "restart", "dry-run", run.reason, 0.0)
                    break
                step_started = self.clock.monotonic()
                self._emit(run, EventKind.STEP_STARTED, step=state.value)
                if state in _WAITING_STATES:
                    self._release_events(run)
                verdict = await self._act(state, run)
                took = self.clock.monotonic() - step_started
                t = ladder.transition(state, verdict)
                self._emit(
                    run,
                    EventKind.STEP_FINISHED,
                    step=state.value,
                    result=verdict.value,
                    detail=run.detail,
                    duration=round(took, 6),
                )
                if _ACTION[state]:
                    self._record_step(run, _ACTION[state], verdict.value, run.detail, took)
                if t.attempt_failed:
                    self._flush_rows(run)
                    self.store.amend_last_restart(
                        run.incident_id,
                        result="failed",
                        reason=run.detail,
                        duration=run.restart_took,
                    )
                if t.give_up is not None:
                    run.reason = t.give_up.value
                state = t.target
        except BaseException:
            if run.journal_task is not None:
                run.journal_task.cancel()
            self._forget_expectation(run)
            if run.pinned:
                # Cannot await here (we may be cancelled); systemd also drops the pin
                # when this connection closes.
                self._spawn_deferred(self.bus.unpin(unit), f"unpin {unit}")
            self._flush_rows(run)
            self._release_events(run)
            raise
        return await self._finish(run, state)

    async def _act(self, state: State, run: _Run) -> Verdict:
        action = {
            State.RESUMING: self._resume,
            State.DIAGNOSING: self._diagnose,
            State.CHECKING_DEPENDENCIES: self._check_dependencies,
            State.WAITING_FOR_DEPENDENCY: self._wait_for_dependency,
            State.CLEANING_UP: self._clean_up,
            State.CHECKING_RESOURCES: self._check_resources,
            State.VALIDATING_CONFIG: self._validate_config,
            State.BACKING_OFF: self._back_off,
            State.RESTARTING: self._restart,
            State.VERIFYING: self._verify,
        }[state]
        run.detail = ""
        return await action(run)

    # --- RESUMING (an incident whose owner died) ------------------------------------------

    def _adopt(self, run: _Run, interrupted: adoption.Interrupted) -> None:
        inc = interrupted.incident
        run.incident = inc
        run.level = Level(min(max(inc.level, 1), 4))
        run.resumed = interrupted
        run.notes.append(adoption.RESUMED)
        self._record_trigger(inc.id, run.unit, run.trigger, "resumed")
        log.warning("%s: incident %s %s", run.unit, inc.id, adoption.RESUMED)

    async def _resume(self, run: _Run) -> Verdict:
        interrupted = run.resumed
        if interrupted is None:  # only an adopting run starts here
            raise AssertionError("RESUMING without an adopted incident")
        props = await self._properties(run.unit)
        run.used, run.last_attempt_at = self._budget(run.unit, run.policy, self._stamp())
        verdict, run.detail = adoption.resume_verdict(interrupted, props, self._boot)
        if verdict is Verdict.RESTART_NOT_MADE and run.used == 0:
            # The counted attempt has left the window (the owner died long ago): it no
            # longer counts, so making it now would be an attempt nobody counted.
            self.store.amend_last_restart(
                interrupted.incident.id, result="not-made", reason="its owner died first"
            )
            verdict = Verdict.OK
            run.detail += "; that attempt is outside the window now, so it is planned afresh"
        run.diagnosis = diagnosis_from(run.unit, props)
        run.before = {k: props[k] for k in _UNIT_STATE if k in props}
        if verdict is Verdict.OK:
            run.snapshot = props  # what diagnose would read again
        elif verdict is Verdict.RESTART_UNVERIFIED:
            run.replaced_invocation = ""
        elif verdict is Verdict.RESTART_NOT_MADE:
            run.reissue = True
        return verdict

    # --- DIAGNOSING -----------------------------------------------------------------------

    async def _diagnose(self, run: _Run) -> Verdict:
        unit, policy, trigger = run.unit, run.policy, run.trigger
        snapshot, run.snapshot = run.snapshot, None
        run.from_snapshot = snapshot is not None
        props = dict(snapshot) if snapshot is not None else await self._properties(unit)
        if props.get("LoadState") == "not-found":
            if run.incident is None and run.restarts == 0:
                raise UnitNotFoundError(f"unit {unit}: systemd has no such unit")
            run.detail = "systemd no longer knows the unit"
            return Verdict.NOT_FOUND
        # Only a snapshot can predate systemd's decision: systemd 252 sets failed and
        # auto-restart in one call and answers no method call in between, so a read
        # that shows failed/failed is already its final word. Waiting on a fresh read
        # (Result keeps the crash's value through a start-limit refusal, so Restart=
        # seems to cover it) cost every OnFailure= run at the start limit 0.5 s.
        if run.from_snapshot and not trigger.settled:
            props = await settle(self.bus, unit, props)
        health = trigger.source == "health"
        diag = diagnosis_from(
            unit,
            props,
            trigger_result=trigger.result if run.restarts == 0 else "",
            health_failed=health,
        )
        run.diagnosis = diag
        run.before = {k: props[k] for k in _UNIT_STATE if k in props}
        if restart_pending(props):
            run.detail = f"systemd is restarting it ({diag.sub_state})"
            self._note_systemd(run)
            return Verdict.SYSTEMD_RESTARTING
        if diag.active and (not health or run.restarts > 0):
            run.detail = f"{unit} is {diag.active_state}"
            return Verdict.HEALTHY
        if (
            diag.active_state == "inactive"
            and diag.result in ("success", "")
            and trigger.source in ("listener", "reconcile")
            and run.incident is None
        ):
            # Stopped cleanly (an operator's `systemctl stop`): not a failure to undo.
            run.detail = f"{unit} is inactive and did not fail; left alone"
            return Verdict.HEALTHY
        if diag.active_state in ("activating", "deactivating", "reloading"):
            run.detail = f"systemd is acting on it ({diag.active_state}/{diag.sub_state})"
            self._note_systemd(run)
            return Verdict.SYSTEMD_RESTARTING
        now = self._stamp()
        # Read once for both questions below; the unit lock keeps other writers away.
        previous = self.store.last_incident(unit) if run.incident is None else None
        if run.incident is None:
            gave_up = self._given_up(unit, now, previous)
            if gave_up is not None:
                run.incident = gave_up
                run.detail = "an earlier incident gave up; run `unitgen reset` to re-arm"
                self._record_trigger(gave_up.id, unit, trigger, "ignored-given-up")
                return Verdict.GIVEN_UP
        used, last = self._budget(unit, policy, now)
        run.used = max(used, run.restarts)
        run.last_attempt_at = last
        level = ladder.level_for(run.used, policy.recovery.max_attempts)
        uncounted = self._uncounted(unit)
        if uncounted is not None:
            level = Level.ALERT_AND_STOP
        if run.incident is None:
            self._open_or_continue(run, diag, now, level, previous)
        elif level != run.level:
            self._escalate(run, level)
        run.level = level
        run.detail = diag.summary()
        if uncounted is not None:
            run.detail = uncounted
            return Verdict.UNCOUNTED
        if level is Level.ALERT_AND_STOP:
            run.detail = (
                f"{run.used} restart attempts within {policy.recovery.window:g}s "
                f"(max_attempts {policy.recovery.max_attempts})"
            )
            return Verdict.BUDGET_SPENT
        return Verdict.OK

    def _open_or_continue(
        self, run: _Run, diag: Diagnosis, now: Stamp, level: Level, last: IncidentRow | None
    ) -> None:
        unit, trigger = run.unit, run.trigger
        incident = None
        if last is not None and last.state == "open":
            # A previous process (a kill -9'd listener) left it open: carry on with it.
            incident = last
            run.notes.append("continuing an interrupted incident")
        elif last is not None and last.state == "recovered" and last.closed is not None:
            since = now.mono - _timeline(last.closed, now)
            if since < run.policy.recovery.min_uptime:
                incident = last
                self.store.reopen_incident(last.id)
                self.store.amend_last_restart(
                    last.id,
                    result="failed",
                    reason=f"failed again after {since:.1f}s (< min_uptime)",
                )
        if incident is not None:
            run.incident = dataclasses.replace(incident, state="open")
            run.level = Level(min(max(incident.level, 1), 4))
            self._record_trigger(incident.id, unit, trigger, "handled")
            if level != run.level:
                self._escalate(run, level)
            return
        incident_id = self.store.open_incident(
            unit,
            source=trigger.source,
            invocation_id=trigger.invocation_id,
            classification=diag.classification,
            level=int(level),
            at=now,
            handled_at=self.clock.time(),
        )
        run.incident = IncidentRow(
            incident_id,
            unit,
            trigger.source,
            trigger.invocation_id,
            diag.classification,
            "open",
            "",
            int(level),
            now,
            None,
        )
        run.level = level
        self._emit(
            run,
            EventKind.INCIDENT_OPENED,
            source=trigger.source,
            classification=diag.classification,
            level=level.label,
        )
        if level is not Level.ALERT_AND_STOP:
            # Opened with nothing left to try: the give-up alert is the one to send.
            self._alert(run, "firing", level, f"{unit} failed ({diag.classification}); recovering")

    def _escalate(self, run: _Run, level: Level) -> None:
        previous = run.level
        run.level = level
        if run.incident is not None:
            self.store.update_incident(run.incident.id, level=int(level))
        self._emit(run, EventKind.ESCALATED, **{"from": previous.label, "to": level.label})
        if level is not Level.ALERT_AND_STOP:
            self._alert(
                run,
                "firing",
                level,
                f"{run.unit}: escalated to {level.label} after {run.used} attempt(s)",
            )

    def _note_systemd(self, run: _Run) -> None:
        last = self.store.last_incident(run.unit)
        incident_id = last.id if last is not None and last.state == "open" else ""
        self._record_trigger(incident_id, run.unit, run.trigger, "systemd-restarting")

    # --- CHECKING_DEPENDENCIES / WAITING_FOR_DEPENDENCY -----------------------------------

    def _systemd_dependencies(self, run: _Run) -> list[str]:
        diag = run.diagnosis
        if diag is None:
            return []
        seen: list[str] = []
        for name in (*diag.requires, *diag.binds_to, *diag.wants):
            if name not in seen and name != run.unit:
                seen.append(name)
        return seen

    async def _check_dependencies(self, run: _Run) -> Verdict:
        down: list[str] = []
        details: list[str] = []
        deps = [
            d
            for d in self._systemd_dependencies(run)
            # A target or slice has no failed state (systemd's target.c, slice.c): asking
            # about basic.target on every incident would cost a round trip for nothing.
            if d not in run.visited and not d.endswith(_NEVER_FAILED)
        ]
        states = await self._active_states(deps)
        for dep in deps:
            # (visited ones are skipped: a cycle, being recovered further up this chain)
            if states.get(dep) != "failed":
                continue
            # Its own run emits events now: ours, made before, go out first.
            self._release_events(run)
            outcome = await self._recover_dependency(dep, run)
            details.append(f"{dep}: {outcome.state.value} ({outcome.reason})")
            if outcome.state not in (State.RECOVERED, State.NOT_NEEDED):
                down.append(dep)
        if run.policy.depends:
            self._release_events(run)  # probes may take seconds
        for i, probe in enumerate(run.policy.depends):
            ok, detail = await self._probe(probe, 3)
            if not ok:
                down.append(f"depends[{i}]")
                details.append(detail)
        run.waiting_on = tuple(down)
        if details and run.diagnosis is not None and run.diagnosis.classification != "dependency":
            # A dependency had failed: that, not the unit's own Result, is the cause.
            run.diagnosis = dataclasses.replace(run.diagnosis, classification="dependency")
            if run.incident is not None:
                self.store.update_incident(run.incident.id, classification="dependency")
        if down:
            run.detail = "dependency down: " + "; ".join(details)
            return Verdict.DEPENDENCY_DOWN
        run.detail = "; ".join(details) or "dependencies active"
        if run.level is Level.CLEANUP_THEN_RESTART:
            return Verdict.CLEANUP_NEXT
        return Verdict.OK

    async def _active_states(self, units: list[str]) -> dict[str, str]:
        """ActiveState of each unit: one ListUnitsByPatterns when the bus has it."""
        if not units:
            return {}
        lister = getattr(self.bus, "list_units", None)
        if lister is not None:
            # Units that are not loaded are not listed, and are not failed either.
            rows = await lister(patterns=units)
            return {r.name: r.active_state for r in rows}
        return {u: str((await self._properties(u)).get("ActiveState", "")) for u in units}

    async def _recover_dependency(self, dep: str, run: _Run) -> Outcome:
        trigger = Trigger("dependency", reason=f"dependency of {run.unit}")
        running = self._running.get(dep)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.create_task(
            self._locked(dep, trigger, run.visited), name=f"recover dependency {dep}"
        )
        self._running[dep] = task
        try:
            return await task
        finally:
            if self._running.get(dep) is task:
                del self._running[dep]

    async def _wait_for_dependency(self, run: _Run) -> Verdict:
        run.dependency_rounds += 1
        bound = min(DEPENDENCY_WAIT, run.policy.recovery.start_timeout)
        still: list[str] = []
        for name in run.waiting_on:
            if name.startswith("depends["):
                index = int(name[len("depends[") : -1])
                probe = run.policy.depends[index]
                ok, detail = await self._probe(probe, max(1, int(bound // 5)))
                if not ok:
                    still.append(detail)
                continue
            try:
                await self._wait_unit(name, lambda p: p.get("ActiveState") == "active", bound)
            except SystemdError as exc:
                still.append(f"{name}: {exc}")
        if still or run.dependency_rounds > MAX_DEPENDENCY_ROUNDS:
            run.detail = "still down after waiting: " + ("; ".join(still) or "flapping")
            return Verdict.DEPENDENCY_STILL_DOWN
        run.detail = "dependencies back: " + ", ".join(run.waiting_on)
        return Verdict.DEPENDENCY_BACK

    # --- CLEANING_UP ----------------------------------------------------------------------

    async def _clean_up(self, run: _Run) -> Verdict:
        from handlers import cleanup

        cfg = run.policy.cleanup
        diag = run.diagnosis
        report = cleanup.CleanupReport(dry_run=self.dry_run)
        pidfile = cfg.pidfile or (diag.pidfile if diag else "")
        if pidfile:
            cgroup = diag.control_group if diag and diag.control_group else None
            if run.from_snapshot:
                # Signals do not carry ControlGroup; the stale-PID check wants it.
                cgroup = await self._control_group(run.unit)
            report.merge(
                await asyncio.to_thread(
                    cleanup.remove_stale_pidfile,
                    pidfile,
                    unit_cgroup=cgroup,
                    dry_run=self.dry_run,
                )
            )
        for root in cfg.temp:
            report.merge(
                await asyncio.to_thread(
                    cleanup.remove_old_files,
                    root,
                    older_than=cfg.older_than,
                    dry_run=self.dry_run,
                )
            )
        run.detail = (
            f"{len(report.removed)} removed, {len(report.refused)} refused, "
            f"{report.freed_bytes} bytes"
        )
        for path, why in report.refused[:5]:
            run.notes.append(f"cleanup refused {cleanup.display_path(path)}: {why}")
        return Verdict.OK

    # --- CHECKING_RESOURCES ---------------------------------------------------------------

    def _disk_paths(self, run: _Run) -> list[str]:
        paths = list(run.policy.disk.paths) + list(run.policy.directories)
        return [p for i, p in enumerate(paths) if p and p not in paths[:i]]

    async def _check_resources(self, run: _Run) -> Verdict:
        policy = run.policy
        if run.diagnosis is not None and run.diagnosis.classification == "oom-kill":
            run.notes.append("the unit was oom-killed")
            self._alert(
                run, "firing", run.level, f"{run.unit} was killed by the OOM killer", "memory"
            )
        # /proc/meminfo is generated in memory: reading it cannot block like statvfs can.
        mem = resources.memory_status(policy.memory.min_available)
        if not mem.ok:
            run.notes.append(f"memory low: {mem.reason}")
            # Recorded and alerted, but not blocking: a restart may still succeed. One
            # memory alert per incident (shared with the oom-kill one).
            self._alert(run, "firing", run.level, f"{run.unit}: {mem.reason}", "memory")
        paths = self._disk_paths(run)
        if not paths:
            run.detail = "no disk paths declared" + (
                f"; memory low: {mem.reason}" if not mem.ok else ""
            )
            return Verdict.OK
        disk = policy.disk

        def low(checked: list[str]) -> list[resources.DiskStatus]:
            statuses = resources.check_disk(
                checked, min_free=disk.min_free, min_free_inodes=disk.min_free_inodes
            )
            return [s for s in statuses if not s.ok]

        problems = await asyncio.to_thread(low, paths)
        if problems and disk.cleanup:
            # Only files on a full filesystem can help it: emptying cleanup directories
            # that live elsewhere would destroy logs and free nothing that matters.
            full = [s.path for s in problems]
            roots = await asyncio.to_thread(_on_same_filesystem, list(disk.cleanup), full)
            if roots:
                from handlers import cleanup

                self._release_events(run)  # freeing space may take a while
                report = await asyncio.to_thread(
                    cleanup.free_space,
                    roots,
                    enough=lambda: not low(full),
                    dry_run=self.dry_run,
                )
                run.notes.append(f"freed {report.freed_bytes} bytes from the cleanup directories")
                problems = await asyncio.to_thread(low, paths)
            else:
                run.notes.append("no cleanup directory is on the full filesystem")
        if problems:
            run.detail = "; ".join(s.reason for s in problems)
            return Verdict.DISK_LOW
        run.detail = "disk ok" + (f"; memory low: {mem.reason}" if not mem.ok else "")
        return Verdict.OK

    # --- VALIDATING_CONFIG ----------------------------------------------------------------

    async def _validate_config(self, run: _Run) -> Verdict:
        argv = run.policy.validate
        if not argv:
            run.detail = "no validate command declared"
            return Verdict.OK
        self._release_events(run)  # the command may take up to validate_timeout
        ok, run.detail = await _validate(argv, run.policy.recovery.validate_timeout)
        return Verdict.OK if ok else Verdict.CONFIG_INVALID

    # --- BACKING_OFF / RESTARTING / VERIFYING ---------------------------------------------

    async def _back_off(self, run: _Run) -> Verdict:
        delay = backoff.delay_for(run.used + 1, run.policy.recovery.backoff, self.rng)
        wait = backoff.remaining(delay, run.last_attempt_at, self.clock.monotonic())
        run.detail = f"attempt {run.used + 1}: waiting {wait:.3f}s (delay {delay:.3f}s)"
        if self._pause is not None:
            self._release_events(run)
            await self._pause.reached("backing-off", run.unit, run.used + 1)
        if wait > 0 and not self.dry_run:
            self._release_events(run)
            await self.clock.sleep(wait)
        return Verdict.OK

    async def _restart(self, run: _Run) -> Verdict:
        unit = run.unit
        at = self._stamp()
        # A re-issued attempt was counted, in the history and the ledger, by its dead owner.
        uncounted = None if run.reissue else self._count_attempt(run, at)
        if uncounted is not None:
            run.detail = uncounted
            return Verdict.UNCOUNTED
        started = self.clock.monotonic()
        run.restarts += 1
        run.last_attempt_at = started
        run.restart_took = None
        if run.reissue:
            # Counted by the owner that died before making it: made now, counted once.
            run.reissue = False
            run.detail = (
                f"attempt {run.used} of {run.policy.recovery.max_attempts}"
                " (counted before its owner died)"
            )
            self._flush_rows(run)
        else:
            run.used += 1
            run.detail = f"attempt {run.used} of {run.policy.recovery.max_attempts}"
            # Counted before it is made: a process killed right after RestartUnit must
            # not leave an attempt the next run does not see (the budget is never exceeded).
            self._record_step(run, "restart", "started", run.detail, 0.0, at=at)
        if self._pause is not None:
            await self._pause.reached("restarting", unit, run.used)
        try:
            if run.level is Level.RESTART_WITH_DEPENDENCIES:
                await self._restart_dependencies(run)
            self._expect_restart(run)
            # Reset (start-limit counter, failed state) and restart in one go.
            run.pinned = True
            _job, reset = await self.bus.reset_and_restart(unit, "replace")
            # Not loaded (garbage-collected while inactive): nothing to reset, and
            # RestartUnit loads it again. Any other refusal: the restart went ahead.
            if reset is not None and not isinstance(reset, UnitNotFoundError):
                run.notes.append(f"reset-failed refused, restarted anyway: {reset}")
        except SystemdError as exc:
            self._forget_expectation(run)
            await self._unpin(run)
            run.detail = f"restart refused: {exc}"
            self.store.amend_last_restart(
                run.incident_id,
                result="failed",
                reason=run.detail,
                duration=self.clock.monotonic() - started,
            )
            return Verdict.FAILED
        finally:
            # Whatever came before the restart (journal, alerts) waits until it is issued.
            self._after_restart_call(run)
        # The row stays "started" until verify's result is written, with this duration:
        # one write per attempt fewer than amending it here as well.
        run.restart_took = self.clock.monotonic() - started
        return Verdict.OK

    def _expect_restart(self, run: _Run) -> None:
        """Collect the unit's changes from before the restart call, so verify reads nothing."""
        self._forget_expectation(run)
        expect = getattr(self.bus, "expect_changes", None)
        if expect is not None and run.before:
            run.expected = expect(run.unit)

    async def _unpin(self, run: _Run) -> None:
        if run.pinned:
            run.pinned = False
            await self.bus.unpin(run.unit)

    def _forget_expectation(self, run: _Run) -> None:
        expected, run.expected = run.expected, None
        if expected is not None:
            self.bus.forget(expected)  # type: ignore[attr-defined]

    def _after_restart_call(self, run: _Run) -> None:
        self._release_events(run)
        self._start_journal(run)
        self._flush_alerts()

    def _start_journal(self, run: _Run) -> None:
        if (
            self._read_journal
            and run.journal_task is None
            and run.restarts <= 1
            and run.trigger.source not in self._journal_skip
        ):
            run.journal_task = asyncio.create_task(
                read_journal(run.unit, user=self.paths.scope is Scope.USER),
                name=f"journal {run.unit}",
            )

    async def _restart_dependencies(self, run: _Run) -> None:
        diag = run.diagnosis
        if diag is None:
            return
        for dep in dict.fromkeys((*diag.requires, *diag.binds_to)):
            if dep in run.visited or not dep.endswith(".service"):
                continue
            await self.bus.restart(dep, "replace")
            self._record_step(run, "restart-dependency", "started", dep, 0.0)

    async def _verify(self, run: _Run) -> Verdict:
        unit = run.unit
        if self._pause is not None:
            await self._pause.reached("verifying", unit, run.used)
        old = run.replaced_invocation
        if old is None:
            old = run.diagnosis.invocation_id if run.diagnosis is not None else ""

        def settled(p: dict[str, Any]) -> bool:
            if p.get("SubState") in RESTARTING_SUBSTATES:
                return True  # it crashed after our start and systemd's Restart= has it
            if job_queued(p):
                return False  # our restart job has not run yet
            if old and diagnosis_from(unit, p).invocation_id == old:
                return False  # still the failed run we saw before restarting
            return p.get("ActiveState") in ("active", "failed", "inactive")

        timeout = run.policy.recovery.start_timeout
        expected, run.expected = run.expected, None
        try:
            # With an expectation: the changes since just before RestartUnit, applied
            # to the state the diagnosis saw; no LoadUnit or GetAll while systemd
            # starts the unit.
            props = await self._wait_unit(
                unit, settled, timeout, since=expected, initial=dict(run.before)
            )
        except SystemdError as exc:
            run.detail = f"not active within {timeout:g}s: {exc}"
            return Verdict.FAILED
        finally:
            # The restart has run (or will not): the unit can no longer be unloaded
            # between our calls, so the pin goes, now that it costs the start nothing.
            await self._unpin(run)
        if props.get("SubState") in RESTARTING_SUBSTATES:
            run.detail = "crashed again; systemd's Restart= took over"
            return Verdict.SYSTEMD_RESTARTING
        if props.get("ActiveState") != "active":
            run.detail = (
                f"{props.get('ActiveState')}/{props.get('SubState')} after restart, "
                f"result {await self._result_of(unit, props)}"
            )
            return Verdict.FAILED
        health = run.policy.health
        if health is not None:
            ok, detail = await self._probe(health.probe, max(1, health.failures))
            if not ok:
                run.detail = f"active but unhealthy: {detail}"
                return Verdict.FAILED
        # MTTR ends here, when it is active and healthy, not after the uptime watch.
        run.active_at = self._stamp()
        if self.watch_uptime and run.policy.recovery.min_uptime > 0:
            return await self._watch_uptime(run, props)
        run.detail = f"active (attempt {run.used})"
        return Verdict.OK

    async def _watch_uptime(self, run: _Run, props: dict[str, Any]) -> Verdict:
        """Active is not enough: it must stay up for min_uptime (signal-driven wait)."""
        unit = run.unit
        invocation = diagnosis_from(unit, props).invocation_id
        min_uptime = run.policy.recovery.min_uptime
        started = self.clock.monotonic()

        def ended(p: dict[str, Any]) -> bool:
            return (
                p.get("ActiveState") != "active"
                or p.get("SubState") in RESTARTING_SUBSTATES
                or diagnosis_from(unit, p).invocation_id != invocation
            )

        try:
            after = await self._wait_unit(unit, ended, min_uptime)
        except SystemdError:
            run.detail = f"active and up for {min_uptime:g}s (attempt {run.used})"
            return Verdict.OK
        took = self.clock.monotonic() - started
        run.detail = (
            f"failed again after {took:.1f}s (< min_uptime {min_uptime:g}s): "
            f"{after.get('ActiveState')}/{after.get('SubState')}"
        )
        if after.get("SubState") in RESTARTING_SUBSTATES:
            return Verdict.SYSTEMD_RESTARTING
        return Verdict.FAILED

    # --- the end of a run -----------------------------------------------------------------

    async def _finish(self, run: _Run, state: State) -> Outcome:
        self._forget_expectation(run)
        await self._unpin(run)
        inc = run.incident
        if state is State.NOT_NEEDED and inc is not None:
            # Active again on a re-diagnosis (a slow start outran start_timeout): recovered.
            state = State.RECOVERED
        closing_recovered = state is State.RECOVERED and inc is not None
        if not closing_recovered:
            # A recovered incident's last rows go with its close, in one transaction.
            self._flush_rows(run)
        if state is State.GAVE_UP and run.reason == GiveUp.GIVEN_UP.value and run.held:
            # Nothing happened: the trigger is recorded (ignored-given-up), but consumers
            # see no incident activity after the GaveUp that ended it.
            run.held.clear()
        self._release_events(run)
        if run.restarts == 0 and run.incident is not None:
            self._start_journal(run)
        now = self._stamp()
        journal: tuple[str, ...] = ()
        if run.journal_task is not None:
            try:
                journal = await asyncio.wait_for(run.journal_task, 5.0)
            except Exception as exc:
                journal = (f"(journal unavailable: {type(exc).__name__})",)
        if closing_recovered and inc is not None:
            run.reason = f"active again after {run.restarts} restart(s)"
            if run.resumed is not None and run.restarts == 0:
                run.reason = "active again: the restart made before its owner died is verified"
            rows, run.rows = run.rows, []
            # The last steps, the restart's result and the close: one transaction.
            self.store.close_incident(
                inc.id,
                state="recovered",
                reason=run.reason,
                at=run.active_at or now,
                rows=rows,
                last_restart=("ok", run.detail, run.restart_took),
            )
            self._emit(
                run,
                EventKind.RECOVERED,
                attempts=run.used,
                duration=round(now.wall - inc.opened.wall, 6),
            )
            await self._resolve_reset(run.unit, run.policy)
            if self.watch_uptime:
                await self._resolve(run.unit, run.policy, inc)
            else:
                self._resolve_later(run, inc)
        elif state is State.GAVE_UP and inc is not None and run.reason != GiveUp.GIVEN_UP.value:
            if run.reason == GiveUp.DEPENDENCY.value and run.waiting_on:
                run.reason = f"dependency: {', '.join(run.waiting_on)} down"
            elif (
                run.reason in (GiveUp.DISK.value, GiveUp.CONFIG.value, GiveUp.UNCOUNTED.value)
                and run.detail
            ):
                run.reason = f"{run.reason}: {run.detail}"
            self.ledger.give_up(run.unit, inc.id, run.reason, now)
            self.store.update_incident(inc.id, level=int(Level.ALERT_AND_STOP))
            self.store.close_incident(inc.id, state="gave-up", reason=run.reason, at=now)
            self._emit(run, EventKind.GAVE_UP, reason=run.reason, attempts=run.used)
            run.level = Level.ALERT_AND_STOP
            self._alert(
                run,
                "firing",
                Level.ALERT_AND_STOP,
                f"{run.unit} left failed: {run.reason} ({run.used} restart attempt(s) in "
                f"{run.policy.recovery.window:g}s); run `unitgen reset {run.unit}` when fixed",
            )
        elif state is State.GAVE_UP and inc is not None:
            run.reason = f"given up earlier ({inc.reason}); run `unitgen reset {run.unit}`"
        elif state is State.NOT_NEEDED:
            run.reason = run.detail or "already active"
            last = self.store.last_incident(run.unit)
            if last is not None and last.state == "open":
                # An incident left open (its process was killed after the restart, or
                # systemd's Restart= finished the job): the unit is up, so it is over.
                self.store.close_incident(
                    last.id, state="recovered", reason="active again (seen later)", at=now
                )
                run.incident = last
                self._emit(run, EventKind.RECOVERED, attempts=run.used)
                closed = self.store.incident(last.id) or last
                if self.watch_uptime:
                    await self._resolve(run.unit, run.policy, closed)
                else:
                    self._resolve_later(run, closed)
            await self._resolve_reset(run.unit, run.policy)
        elif state is State.WAITING_FOR_SYSTEMD:
            run.reason = run.detail or "systemd is restarting it"
            if inc is not None and run.restarts > 0:
                # Our start crashed and systemd's Restart= has it: the incident stays open
                # and the next OnFailure= (start-limit-hit) continues it.
                pass
        elif run.reason == "" and self.dry_run:
            run.reason = "dry run"
        self._history_gap(run)
        self._flush_alerts()
        return self._outcome(run, state, run.reason or run.detail, journal)

    def _outcome(
        self, run: _Run, state: State, reason: str, journal: tuple[str, ...] = ()
    ) -> Outcome:
        diag = run.diagnosis
        return Outcome(
            unit=run.unit,
            state=state,
            reason=reason,
            attempts=run.used,
            incident_id=run.incident_id,
            level=run.level,
            classification=diag.classification if diag else "",
            restarts=run.restarts,
            dry_run=self.dry_run,
            default_policy=run.policy.default,
            duration=self.clock.monotonic() - run.started,
            notes=tuple(dict.fromkeys(run.notes)),
            journal=journal,
        )

    # --- alerts ---------------------------------------------------------------------------

    def _alerter_for(self, policy: Policy) -> Alerter | None:
        if policy.unit not in self._alerters:
            try:
                self._alerters[policy.unit] = self._alerter_factory(policy)
            except PolicyError as exc:
                log.warning("%s: alert targets unusable: %s", policy.unit, exc)
                self._alerters[policy.unit] = None
        return self._alerters[policy.unit]

    def _alert(
        self,
        run: _Run,
        status: Literal["firing", "resolved"],
        level: Level,
        summary: str,
        key: str | None = None,
    ) -> None:
        inc = run.incident
        if inc is None or self.dry_run:
            return
        self._send(run.unit, run.policy, inc, status, level, summary, run.used, key)

    def _send(
        self,
        unit: str,
        policy: Policy,
        inc: IncidentRow,
        status: Literal["firing", "resolved"],
        level: Level,
        summary: str,
        attempts: int,
        key: str | None = None,
    ) -> None:
        """``key``: what makes it once-only; the level for firing alerts, "" for resolved."""
        alerter = self._alerter_for(policy)
        if alerter is None or not alerter.targets:
            return
        if key is None:
            key = level.label if status == "firing" else ""
        if not self.store.claim_alert(inc.id, key, status, self.clock.time()):
            return  # this process or another already sent it
        from handlers.alerts import Alert

        alert = Alert(
            unit=unit,
            incident_id=inc.id,
            level=level.label,
            status=status,
            reason=inc.classification or "failure",
            summary=summary,
            attempts=attempts,
            started_at=inc.opened.wall,
            ended_at=self.clock.time() if status == "resolved" else None,
            host=self.host,
        )
        # Queued, not sent: building the alert imports requests, which must not delay
        # the restart. Flushed right after RestartUnit, and when the run ends.
        self._queued.append((alerter, alert, key))

    def _flush_alerts(self) -> None:
        queued, self._queued = self._queued, []
        for alerter, alert, key in queued:
            task = asyncio.create_task(
                self._deliver(alerter, alert, key), name=f"alert {alert.unit}"
            )
            self._pending.add(task)
            task.add_done_callback(self._alert_done)

    async def _deliver(self, alerter: Alerter, alert: Alert, key: str) -> None:
        deliveries: list[Delivery] = await alerter.send(alert)
        ok = bool(deliveries) and all(d.ok for d in deliveries)
        detail = "; ".join(d.error or f"{d.target}: ok" for d in deliveries)[:500]
        self.store.record_delivery(
            alert.incident_id, key, alert.status, delivered=ok, detail=detail
        )
        if not ok:
            log.warning("alert for %s not delivered everywhere: %s", alert.unit, detail)

    def _alert_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("alert task %s failed: %r", task.get_name(), exc)

    async def _resolve(self, unit: str, policy: Policy, inc: IncidentRow) -> None:
        if any(status == "firing" for _level, status in self.store.alerted(inc.id)):
            self._send(
                unit,
                policy,
                inc,
                "resolved",
                Level(min(max(inc.level, 1), 4)),
                f"{unit} is active again",
                0,
            )

    def _resolve_later(self, run: _Run, inc: IncidentRow) -> None:
        """Send "resolved" once the unit has stayed up for min_uptime (long-lived engines)."""
        unit, policy = run.unit, run.policy
        alerter = self._alerter_for(policy)
        if alerter is None or not alerter.targets:
            # Nobody to tell: the wait (a LoadUnit and a GetAll, then min_uptime of
            # signals) would end in _send() doing nothing.
            return

        async def later() -> None:
            # The first predicate call sees the wait's own snapshot: that run's
            # invocation is the one that must last (no separate read before it).
            first: list[str] = []

            def ended(p: dict[str, Any]) -> bool:
                invocation = diagnosis_from(unit, p).invocation_id
                if not first:
                    first.append(invocation)
                return p.get("ActiveState") != "active" or invocation != first[0]

            try:
                await self._wait_unit(unit, ended, policy.recovery.min_uptime)
            except SystemdError:
                # Still the same run, still active, min_uptime later: it is resolved.
                current = self.store.incident(inc.id)
                if current is not None and current.state == "recovered":
                    await self._resolve(unit, policy, current)

        self._spawn_deferred(later(), f"resolve {unit}")

    def _spawn_deferred(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._deferred.add(task)
        task.add_done_callback(self._deferred_done)

    def _deferred_done(self, task: asyncio.Task[None]) -> None:
        self._deferred.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("deferred %s failed: %r", task.get_name(), task.exception())

    async def _resolve_reset(self, unit: str, policy: Policy) -> None:
        """Incidents given up, then reset, resolve once the unit is seen healthy."""
        now = self._stamp()
        reset_at = self.store.reset_at(unit, now)
        if reset_at is None:
            return
        for inc in self.store.incidents(unit, 20):
            if (
                inc.state == "gave-up"
                and inc.closed is not None
                and reset_at >= _timeline(inc.closed, now)
            ):
                await self._resolve(unit, policy, inc)

    # --- helpers --------------------------------------------------------------------------

    def _stamp(self) -> Stamp:
        return Stamp(self.clock.monotonic(), self.clock.time(), self._boot)

    def _policy(self, unit: str, notes: list[str]) -> Policy:
        # Re-read only when a candidate file changed: the listener reads it per failure.
        key = _policy_stat(unit, self.paths.policy_dir)
        cached = self._policies.get(unit)
        if cached is not None and cached[0] == key:
            return cached[1]
        # An instance without a file of its own shares its template's: a burst of
        # a thousand failing instances parses the template once, not a thousand times.
        template_name = _template_of(unit)
        own_file_missing = key[:3] == (0, 0, 0)  # _policy_stat's first triple: the unit's own
        shared = f"{template_name}#template" if template_name and own_file_missing else ""
        template = self._policies.get(shared) if shared else None
        if template is not None and template[0] == key:
            policy = dataclasses.replace(template[1], unit=unit)
            self._policies[unit] = (key, policy)
            return policy
        try:
            policy = load_policy(unit, self.paths.policy_dir)
        except PolicyError as exc:
            # Recovery must not stop on a broken policy file; the operator is told.
            notes.append(f"policy unreadable, using the defaults: {exc}")
            log.warning("%s", exc)
            return default_policy(unit)
        self._policies[unit] = (key, policy)
        if shared:
            self._policies[shared] = (key, policy)
        return policy

    async def _properties(self, unit: str) -> dict[str, Any]:
        return await self.bus.unit_properties(unit)

    async def _control_group(self, unit: str) -> str | None:
        getter = getattr(self.bus, "get_property", None)
        if getter is None:
            return None
        try:
            value = await getter(unit, "ControlGroup", SERVICE_INTERFACE)
        except SystemdError:
            return None
        return str(value) if value else None

    async def _wait_unit(
        self,
        unit: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 -- mirrors SystemdClient.wait_for
        *,
        since: Any = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """wait_for on the Unit interface alone: every predicate here reads only it.

        The Service interface's GetAll is the largest reply systemd sends (~200
        properties); skipping it halves the reads of each wait. ``since`` (the
        bus's expectation, see _expect_restart) and ``initial``: no read at all.
        """
        bus: Any = self.bus
        if since is not None:
            result: dict[str, Any] = await bus.wait_for(
                unit, predicate, timeout, since=since, initial=initial
            )
            return result
        if getattr(bus, "selects_interfaces", False):
            props: dict[str, Any] = await bus.wait_for(
                unit, predicate, timeout, interfaces=(UNIT_INTERFACE,)
            )
            return props
        return await self.bus.wait_for(unit, predicate, timeout)

    async def _result_of(self, unit: str, props: dict[str, Any]) -> str:
        """Result (a Service property) for a message, when the Unit read lacks it."""
        if "Result" in props:
            return str(props["Result"])
        getter = getattr(self.bus, "get_property", None)
        if getter is None:
            return "unknown"
        try:
            return str(await getter(unit, "Result", SERVICE_INTERFACE))
        except SystemdError:
            return "unknown"

    def _budget(self, unit: str, policy: Policy, now: Stamp) -> tuple[int, float | None]:
        r = policy.recovery
        entry = self.ledger.entry(unit)
        # The union of both records; an attempt in both carries the same stamp.
        times = sorted(
            {
                *self.store.restart_times(unit, now, max(r.window, r.stable_after)),
                *(_timeline(a, now) for a in entry.attempts),
            }
        )
        last = max(times) if times else None
        since = ladder.count_start(
            now.mono,
            window=r.window,
            stable_after=r.stable_after,
            last_attempt_at=last,
            reset_at=self._reset_at(unit, now, entry),
        )
        return ladder.attempts_in_window(times, since), last

    def _reset_at(self, unit: str, now: Stamp, entry: Entry) -> float | None:
        times = [t for t in (self.store.reset_at(unit, now),) if t is not None]
        if entry.reset is not None:
            times.append(_timeline(entry.reset, now))
        return max(times, default=None)

    def _given_up(self, unit: str, now: Stamp, last: IncidentRow | None) -> IncidentRow | None:
        """The give-up no reset re-armed: ``last`` (the unit's last incident), or the
        ledger's record of one when the history lost it."""
        entry = self.ledger.entry(unit)
        reset_at = self._reset_at(unit, now, entry)
        if (
            last is not None
            and last.state == "gave-up"
            and last.closed is not None
            and (reset_at is None or reset_at < _timeline(last.closed, now))
        ):
            return last
        mark = entry.gave_up
        if mark is None or (reset_at is not None and reset_at >= _timeline(mark.at, now)):
            return None
        return IncidentRow(
            mark.incident_id,
            unit,
            "ledger",
            "",
            "",
            "gave-up",
            mark.reason,
            int(Level.ALERT_AND_STOP),
            mark.at,
            mark.at,
        )

    def _uncounted(self, unit: str) -> str | None:
        """Why no restart of ``unit`` could be counted beyond this process, or None."""
        if self.store.persistent or self.dry_run or self.ledger.writable(unit):
            return None
        return f"no restart count can be kept: {self.store.note}; ledger: {self.ledger.problem}"

    def _count_attempt(self, run: _Run, at: Stamp) -> str | None:
        """Count the coming restart in the ledger; why it cannot be counted anywhere, or None."""
        if self.dry_run:
            return None
        r = run.policy.recovery
        horizon = max(r.window, r.stable_after) + 60.0
        if self.ledger.record_attempt(run.unit, at, horizon=horizon) or self.store.persistent:
            return None
        return self._uncounted(run.unit)

    def _history_gap(self, run: _Run) -> None:
        """Say once (journal, and one alert per unit) that history is not being kept."""
        if self.dry_run:
            return
        if self.ledger.problem:
            run.notes.append(f"restart ledger not written: {self.ledger.problem}")
        if self.store.persistent:
            self.ledger.clear_gap()
            return
        why = self.store.note or "history not kept"
        began = self.ledger.mark_gap(why, self.clock.time())
        if began is not None:
            log.warning(
                "recovery history degraded: %s; restart budgets are kept in %s until it recovers",
                why,
                self.ledger.directory,
            )
        gap = began or self.ledger.gap()
        if gap is None or run.incident is None or run.reason == GiveUp.GIVEN_UP.value:
            return  # a run that only found an earlier give-up alerts nothing
        if self.ledger.entry(run.unit).gap_alerted == gap.since:
            return
        if self.ledger.gap_alerted(run.unit, gap.since):
            self._alert(
                run,
                "firing",
                run.level,
                f"{run.unit}: recovery history not kept since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(gap.since))} ({why}); "
                f"the restart budget is counted in {self.ledger.directory}",
                "history",
            )

    def _record_step(
        self,
        run: _Run,
        action: str,
        result: str,
        reason: str,
        duration: float,
        *,
        at: Stamp | None = None,
    ) -> None:
        if run.incident is None:
            return
        run.rows.append(
            AttemptRow(
                run.incident.id,
                run.unit,
                at if at is not None else self._stamp(),
                int(run.level),
                action,
                result,
                reason[:1000],
                duration,
            )
        )
        if action == "restart" or len(run.rows) >= 32:
            # The restart row (and the steps before it) are on disk before RestartUnit.
            self._flush_rows(run)

    def _flush_rows(self, run: _Run) -> None:
        rows, run.rows = run.rows, []
        if rows:
            # One transaction for the steps of a run: each commit is a WAL append.
            self.store.record_attempts(rows)

    def _record_trigger(
        self, incident_id: str, unit: str, trigger: Trigger, disposition: str
    ) -> None:
        self.store.record_trigger(
            incident_id,
            unit,
            wall=self.clock.time(),
            source=trigger.source,
            invocation_id=trigger.invocation_id,
            disposition=disposition,
        )

    def _emit(self, run: _Run, kind: EventKind, **fields: FieldValue) -> None:
        base: dict[str, FieldValue] = {"level": run.level.label}
        base.update(fields)
        event = Event(kind, run.unit, run.incident_id, base)
        if run.held is not None:
            run.held.append(event)
            return
        self._deliver_event(event)

    def _deliver_event(self, event: Event) -> None:
        try:
            self.events.emit(event)
        except Exception:
            log.exception("event sink failed on %s", event.kind.value)

    def _release_events(self, run: _Run) -> None:
        """Deliver the held events, in order; later ones go straight out."""
        held, run.held = run.held, None
        for event in held or ():
            self._deliver_event(event)


# The Unit-interface state verify starts from when it applies the restart's changes.
_UNIT_STATE = ("ActiveState", "SubState", "InvocationID", "Job")

_ACTION: dict[State, str] = {
    State.RESUMING: "resume",
    State.DIAGNOSING: "diagnose",
    State.CHECKING_DEPENDENCIES: "dependencies",
    State.WAITING_FOR_DEPENDENCY: "wait-dependency",
    State.CLEANING_UP: "cleanup",
    State.CHECKING_RESOURCES: "resources",
    State.VALIDATING_CONFIG: "validate",
    State.BACKING_OFF: "backoff",
    State.RESTARTING: "",  # _restart records the counted "restart" row itself
    State.VERIFYING: "verify",
}


_NEVER_FAILED = (".target", ".slice")
UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"

# States that wait (on systemd, a dependency, the disk) as a matter of course: events
# held for the restart's sake are delivered before them, not held through them.
_WAITING_STATES = frozenset({State.WAITING_FOR_DEPENDENCY, State.CLEANING_UP, State.VERIFYING})


def _test_pause() -> PausePoint | None:
    """The test-only pause point (handlers/testhook.py); None unless its variables are set."""
    if "UNITGEN_TEST_PAUSE_AT" not in os.environ:
        return None
    from handlers.testhook import from_environment

    return from_environment(os.environ)


def _timeline(at: Stamp, now: Stamp) -> float:
    if at.boot == now.boot:
        return at.mono
    return now.mono - max(0.0, now.wall - at.wall)


def history_gap(store: Store, ledger: Ledger, now: float) -> tuple[float, str] | None:
    """(since, why) when the history database is not being written, else None."""
    gap = ledger.gap()
    if gap is not None:
        return gap.since, gap.reason
    if not store.persistent:
        return now, store.note or "history not kept"
    return None


def _state_of(inc: IncidentRow | None) -> tuple[State, str]:
    if inc is None:
        return State.NOT_NEEDED, "no incident recorded"
    mapping = {
        "recovered": State.RECOVERED,
        "gave-up": State.GAVE_UP,
        "open": State.DIAGNOSING,
        "reset": State.NOT_NEEDED,
    }
    return mapping.get(inc.state, State.DIAGNOSING), inc.reason or inc.state


def _readonly_copy(paths: Paths) -> Store:
    """For --dry-run: an in-memory copy of the history, so the plan is real but leaves no trace."""
    return Store.snapshot(paths.database)


def _alerter(policy: Policy) -> Alerter | None:
    if not policy.alerts:
        return None
    from handlers.alerts import Alerter, AlertTarget

    targets = [AlertTarget.from_mapping(m) for m in policy.alerts]
    return Alerter(targets)


def _failure_reason(summary: UnitSummary) -> str:
    """What failed last, and, if the ladder gave up, why it stopped."""
    what = summary.last_classification or "unknown"
    if summary.state == "gave-up" and summary.last_reason:
        return f"{what}; gave up: {summary.last_reason}"
    return what if summary.incidents else ""


def _template_of(unit: str) -> str:
    """``worker@7.service`` -> ``worker@.service``; "" for a unit that is no instance."""
    prefix, at, rest = unit.partition("@")
    return f"{prefix}@.{rest.rsplit('.', 1)[1]}" if at and "." in rest else ""


def _policy_stat(unit: str, policy_dir: Path) -> tuple[int, ...]:
    # os.stat on a joined string: pathlib's join and stat cost more than the
    # syscall, and this runs on every failure (~1.5 % of a burst's samples).
    base = os.fspath(policy_dir)
    names = [f"{unit}.json"]
    if template := _template_of(unit):
        names.append(f"{template}.json")
    out: list[int] = []
    for name in names:
        try:
            st = os.stat(f"{base}/{name}")  # noqa: PTH116
        except OSError:
            out.extend((0, 0, 0))
        else:
            out.extend((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _on_same_filesystem(roots: list[str], paths: list[str]) -> list[str]:
    """The roots that live on the filesystem of one of ``paths`` (nearest existing parent)."""

    def device(path: str) -> int | None:
        current = Path(path)
        while True:
            try:
                return current.stat().st_dev
            except FileNotFoundError:
                if current.parent == current:
                    return None
                current = current.parent
            except OSError:
                return None

    wanted = {device(p) for p in paths} - {None}
    return [r for r in roots if device(r) in wanted]


async def _validate(argv: tuple[str, ...], timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    from handlers import configcheck

    checked = await configcheck.validate_config(argv, timeout=timeout)
    return bool(checked.ok), str(checked.reason)


async def _probe(probe: Probe, attempts: int) -> tuple[bool, str]:
    from handlers.probes import ProbeSpec, probe_with_backoff

    try:
        spec = ProbeSpec.from_model(probe)
    except PolicyError as exc:
        return False, str(exc)
    result = await probe_with_backoff(spec, attempts=max(1, attempts), base=0.5, max_delay=5.0)
    return result.ok, result.detail
