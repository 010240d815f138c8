"""The recovery engine: runs the ladder of :mod:`handlers.ladder` with real side effects.

This is the Python API both entry points use, so they share one state (the
SQLite store at ``Paths.database``) and one set of locks (``Paths.lock_dir``):

* ``unitgen recover UNIT`` (the OnFailure= unit) builds an engine, calls
  :meth:`RecoveryEngine.recover` once and :meth:`RecoveryEngine.aclose`.
* The listener keeps one engine for its lifetime and calls ``recover`` for
  each failure, ``reset``/``status``/``history`` for its D-Bus methods.

Read top to bottom: the public API, then joining a recovery already running,
then the loop. The engine only performs actions (:mod:`.steps`) and reduces
their results to a :class:`~handlers.ladder.Verdict`; which state follows is
decided by :func:`handlers.ladder.transition` alone, and what a terminal state
means is :mod:`.finish`'s. Every step is recorded (time, level, action, result,
reason, duration) and emitted as an event. Alerts (:mod:`.alerting`) are fired
as tasks the engine keeps strong references to, and :meth:`aclose` waits for
them (bounded) so a short-lived CLI process does not lose them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from handlers import adoption, ladder
from handlers.correlation import GROUP_RESTARTS_IN_FLIGHT, Correlator, RestartRate
from handlers.diagnose import SystemdClient
from handlers.events import EventKind, EventSink, NullSink
from handlers.ladder import DEPENDENCY_WAIT, JOIN_CAP, Level, State
from handlers.ledger import Ledger
from handlers.locks import UnitLock, check_unit_name
from handlers.recovery import history
from handlers.recovery.alerting import Alerting, default_alerter
from handlers.recovery.core import Moment
from handlers.recovery.finish import DRY_RUN_STOP, Finish
from handlers.recovery.grouping import group_outcome
from handlers.recovery.model import (
    AlerterFactory,
    Clock,
    LockMode,
    Outcome,
    ProbeRunner,
    Run,
    SystemClock,
    Trigger,
)
from handlers.recovery.steps import Steps, run_probe, test_pause
from handlers.store import Store, boot_id
from unitgen.errors import UnitNotFoundError
from unitgen.paths import Paths
from unitgen.policy import Policy

if TYPE_CHECKING:
    import random

log = logging.getLogger("handlers.recovery")


class RecoveryEngine(Steps, Finish):
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
        correlate: bool = False,
        max_restarts_per_second: float = 0.0,
        group_restarts: int = GROUP_RESTARTS_IN_FLIGHT,
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

        ``correlate``: group failures that share a cause (handlers/correlation.py);
        the listener sets it, a one-unit OnFailure= process has nothing to group.
        ``max_restarts_per_second``: the host-wide limit on this engine's restarts
        (0: none). ``group_restarts``: a group's dependents restarting at once.
        """
        self.bus = bus
        self.paths = paths
        self.events: EventSink = events if events is not None else NullSink()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng
        self.lock_mode: LockMode = lock_mode
        self.dry_run = dry_run
        self._probe = probe_runner if probe_runner is not None else run_probe
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
        self.alerting = Alerting(
            self.store,
            self.clock,
            host=self.host,
            dry_run=dry_run,
            factory=alerter_factory if alerter_factory is not None else default_alerter,
            stamp=self._stamp,
            wait_unit=self._wait_unit,
            spawn=self._spawn_deferred,
        )
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._policies: dict[str, tuple[tuple[int, ...], Policy]] = {}
        self._checkpointing: asyncio.Future[None] | None = None
        self._pause = test_pause()
        self.correlator = Correlator(self.clock.monotonic) if correlate else None
        self._rate = RestartRate(max_restarts_per_second, self.clock.monotonic)
        self._group_slots = asyncio.Semaphore(max(1, group_restarts))
        self._on_wait = None
        self._group_walls = {}
        self._closing = False
        self._unchecked = set()
        if self.correlator is not None:
            self.alerting.gate = self._gate
            self.alerting.hold_for = self.correlator.window

    # --- public API ---------------------------------------------------------------------

    async def recover(self, unit: str, trigger: Trigger) -> Outcome:
        """Run the ladder for ``unit`` (or join the one running) and return how it ended."""
        check_unit_name(unit)
        running = self._running.get(unit)
        if running is not None:
            return await self._join_in_process(unit, trigger, running)
        try:
            return await self._as_task(unit, trigger, set(), f"recover {unit}")
        finally:
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
            if last.state in ("open", "parked"):
                self.store.close_incident(last.id, state="reset", reason="re-armed", at=now)
            if healthy:
                await self.alerting.resolve_reset(unit, self._policy(unit, notes))
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
        return history.status(
            self.store, self.ledger, units, self._stamp(), self._policy, self.parked_info
        )

    def history(self, unit: str, limit: int = 50) -> list[dict[str, object]]:
        check_unit_name(unit)
        return history.history(self.store, unit, limit)

    def unowned_incidents(self) -> adoption.Unowned:
        """Units whose open incident no run works on: owner died, or left to systemd.

        The listener asks at every reconciliation (its own start after a ``kill -9``
        included). It recovers each interrupted one, which adopts the incident: a
        unit whose dead owner's restart already brought it up is not failed, so
        nothing else would. An interrupted unit counts only while its lock is free
        (a live owner in another process holds it) and no run of ours has it.
        """
        found = adoption.unowned(self.store)
        interrupted: list[str] = []
        for unit in found.interrupted:
            if unit in self._running:
                continue
            lock = UnitLock(self.paths.lock_dir, unit)
            if lock.try_acquire():
                lock.release()
                interrupted.append(unit)
        return adoption.Unowned(interrupted, found.left_to_systemd)

    def resolve_orphaned(self, active: Callable[[str], bool]) -> list[str]:
        """Recovered incidents whose "resolved" alert never went out: the process that
        closed them died while it waited out ``min_uptime`` (a ``kill -9``, a watchdog
        kill). For each whose unit is ``active`` now, "resolved" goes out once the unit
        has stayed up ``min_uptime``, as its owner would have sent it. The listener asks
        at every reconciliation, like :meth:`unowned_incidents`; the once-only claim in
        the database keeps a second ask, or the owner's own wait, from sending twice.
        """
        found: list[str] = []
        for inc in self.store.unresolved_recoveries():
            if inc.unit in self._running or not active(inc.unit):
                continue
            notes: list[str] = []
            self.alerting.resolve_when_up(inc.unit, self._policy(inc.unit, notes), inc)
            found.append(inc.unit)
        return found

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait (bounded) for alerts still being sent, then close the store."""
        if self._checkpointing is not None:
            # A thread cannot be cancelled; a PASSIVE checkpoint is short.
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        self._close_groups()
        for task in list(self._deferred):
            task.cancel()
        if self._deferred:
            await asyncio.gather(*self._deferred, return_exceptions=True)
        await self.alerting.drain(timeout)
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
        state, reason = history.state_of(last)
        return Outcome(
            unit,
            state,
            reason,
            used,
            incident_id,
            level=history.level_of(last) if last else Level.RESTART,
            classification=last.classification if last else "",
            joined=True,
            default_policy=policy.default,
            notes=tuple(notes),
        )

    # --- the ladder ---------------------------------------------------------------------

    async def _ladder(self, unit: str, trigger: Trigger, visited: set[str]) -> Outcome:
        """One run, under the unit's lock, counted in its incident group's bookkeeping."""
        self._group_began(unit)
        outcome = ""
        try:
            result = await self._ladder_run(unit, trigger, visited)
            outcome = group_outcome(result)
            return result
        finally:
            self._group_end(unit, outcome)

    async def _ladder_run(self, unit: str, trigger: Trigger, visited: set[str]) -> Outcome:
        """One run: where it enters, the loop, and its end."""
        run = self._new_run(unit, trigger, visited)
        entry = self._entry(run)
        if isinstance(entry, Outcome):
            return entry
        try:
            state = await self._loop(run, entry)
        except BaseException:
            self._release_slot(run)
            self._abandon(run)
            raise
        self._release_slot(run)
        return await self._finish(run, state)

    def _new_run(self, unit: str, trigger: Trigger, visited: set[str]) -> Run:
        visited.add(unit)
        notes: list[str] = []
        policy = self._policy(unit, notes)
        run = Run(
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
        return run

    def _entry(self, run: Run) -> State | Outcome:
        """The state the run begins in, or the outcome of a trigger already handled."""
        # We hold the unit's lock: an open incident is one whose owner died. It is
        # adopted before the dedupe, which would call its own InvocationID a duplicate.
        run.previous = self.store.last_incident(run.unit)
        interrupted = adoption.interrupted_of(self.store, run.previous)
        if interrupted is not None:
            self._adopt(run, interrupted)
            return State.RESUMING
        if run.trigger.source == "parked" and self.parked_info(run.unit) is None:
            # Recovered, reset or stopped since it parked: a retry has nothing to do.
            run.unparked = True  # a stale mark (another process ended it) goes too
            self._parking_ended(run, State.NOT_NEEDED)
            return self._outcome(run, State.NOT_NEEDED, "no longer parked")
        duplicate = self.store.handled_invocation(run.unit, run.trigger.invocation_id)
        if duplicate is not None:
            inc = self.store.incident(duplicate)
            self._record_trigger(duplicate, run.unit, run.trigger, "duplicate")
            state, reason = history.state_of(inc)
            return self._outcome(run, state, f"invocation already handled: {reason}")
        return State.DIAGNOSING

    async def _loop(self, run: Run, state: State) -> State:
        """Act, record, transition, until a terminal state (or a dry run's restart)."""
        while not state.terminal:
            if self.dry_run and state is State.RESTARTING:
                self._record_step(run, "restart", "dry-run", DRY_RUN_STOP, 0.0)
                break
            step_started = self.clock.monotonic()
            self._emit(run, EventKind.STEP_STARTED, step=state.value)
            self._events_at(run, Moment.ENTERING, state)
            verdict = await self._act(state, run)
            took = self.clock.monotonic() - step_started
            t = self._park_instead(run, ladder.transition(state, verdict))
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
                    duration=run.call.took,
                )
            if t.give_up is not None:
                run.give_up = t.give_up
            state = t.target
        return state

    def _abandon(self, run: Run) -> None:
        """The run raised (or was cancelled): let go of what it holds, without awaiting."""
        if run.journal_task is not None:
            run.journal_task.cancel()
        self._forget_expectation(run)
        if run.call.pinned:
            # Cannot await here (we may be cancelled); systemd also drops the pin
            # when this connection closes.
            self._spawn_deferred(self.bus.unpin(run.unit), f"unpin {run.unit}")
        self._flush_rows(run)
        self._events_at(run, Moment.RAISED)


# The action each state records as its step (the history's "action" column).
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


def _readonly_copy(paths: Paths) -> Store:
    """For --dry-run: an in-memory copy of the history, so the plan is real but leaves no trace."""
    return Store.snapshot(paths.database)
