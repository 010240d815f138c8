"""What every part of a run shares: the engine's services and the run's records.

:class:`Core` holds the services (the bus, the history store and the ledger,
the clock, the event sink, the alerts) and the small operations the steps
(:mod:`.steps`), the end of a run (:mod:`.finish`) and the public API
(:mod:`.engine`) all use: reading the unit, recording steps and triggers,
emitting events, policies and budgets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.diagnose import SystemdClient, read_journal
from handlers.events import Event, EventKind, EventSink, FieldValue
from handlers.ladder import GiveUp, State
from handlers.ledger import Ledger
from handlers.recovery import history
from handlers.recovery.alerting import Alerting
from handlers.recovery.model import Clock, LockMode, Outcome, ProbeRunner, Run, Trigger
from handlers.store import AttemptRow, IncidentRow, Stamp, Store
from handlers.tasks import report_failure
from unitgen.errors import PolicyError, SystemdError
from unitgen.paths import Paths, Scope
from unitgen.policy import Policy, default_policy, load_policy

if TYPE_CHECKING:
    import random

    from handlers.bus import Expectation
    from handlers.testhook import PausePoint

log = logging.getLogger("handlers.recovery")

UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"


class Moment(enum.Enum):
    """Where a run's held events are looked at (:meth:`Core._events_at`)."""

    ENTERING = "entering a state"  # the loop, at every transition
    WAIT = "a step is about to wait"
    RESTART_SENT = "RestartUnit has been sent"
    END = "the run ended"
    RAISED = "the run raised"


# States that wait (on systemd, a dependency, the disk) as a matter of course: events
# held for the restart's sake are delivered before them, not held through them.
_WAITING_STATES = frozenset({State.WAITING_FOR_DEPENDENCY, State.CLEANING_UP, State.VERIFYING})


class Core:
    """The services of one engine and the operations its runs share.

    :class:`handlers.recovery.RecoveryEngine` sets every attribute in its
    constructor; this class only declares them.
    """

    bus: SystemdClient
    paths: Paths
    events: EventSink
    clock: Clock
    lock_mode: LockMode
    dry_run: bool
    watch_uptime: bool
    host: str
    store: Store
    ledger: Ledger
    alerting: Alerting
    _rng: random.Random | None
    _probe: ProbeRunner
    _read_journal: bool
    _journal_skip: frozenset[str]
    _deferred: set[asyncio.Task[None]]
    _boot: str
    _running: dict[str, asyncio.Task[Outcome]]
    _policies: dict[str, tuple[tuple[int, ...], Policy]]
    _pause: PausePoint | None

    @property
    def rng(self) -> random.Random:
        # Created on first use: `random` costs start-up time the first attempt never needs.
        if self._rng is None:
            import random

            self._rng = random.Random()  # noqa: S311 -- jitter, not cryptography
        return self._rng

    async def _locked(self, unit: str, trigger: Trigger, visited: set[str]) -> Outcome:
        """Run the ladder for ``unit`` under its lock (the engine's; a dependency's run)."""
        raise NotImplementedError

    async def _as_task(self, unit: str, trigger: Trigger, visited: set[str], name: str) -> Outcome:
        """Run ``unit``'s ladder as the task others of this process join (``_running``)."""
        task = asyncio.create_task(self._locked(unit, trigger, visited), name=name)
        self._running[unit] = task
        try:
            return await task
        finally:
            if self._running.get(unit) is task:
                del self._running[unit]

    # --- policy and time ------------------------------------------------------------------

    def _stamp(self) -> Stamp:
        return Stamp(self.clock.monotonic(), self.clock.time(), self._boot)

    def _policy(self, unit: str, notes: list[str]) -> Policy:
        # Re-read only when a candidate file changed: the listener reads it per failure.
        key = policy_stat(unit, self.paths.policy_dir)
        cached = self._policies.get(unit)
        if cached is not None and cached[0] == key:
            return cached[1]
        # An instance without a file of its own shares its template's: a burst of
        # a thousand failing instances parses the template once, not a thousand times.
        template_name = template_of(unit)
        own_file_missing = key[:3] == (0, 0, 0)  # policy_stat's first triple: the unit's own
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

    # --- the budget (the read side, handlers/recovery/history.py) ---------------------------

    def _budget(
        self, unit: str, policy: Policy, now: Stamp, known: history.Records | None = None
    ) -> tuple[int, float | None]:
        return history.budget(self.store, self.ledger, unit, policy, now, known)

    def _given_up(
        self,
        unit: str,
        now: Stamp,
        last: IncidentRow | None,
        known: history.Records | None = None,
    ) -> IncidentRow | None:
        return history.given_up(self.store, self.ledger, unit, now, last, known)

    def _uncounted(self, unit: str) -> str | None:
        """Why no restart of ``unit`` could be counted beyond this process, or None."""
        if self.store.persistent or self.dry_run or self.ledger.writable(unit):
            return None
        return f"no restart count can be kept: {self.store.note}; ledger: {self.ledger.problem}"

    def _count_attempt(self, run: Run, at: Stamp) -> str | None:
        """Count the coming restart in the ledger; why it cannot be counted anywhere, or None."""
        if self.dry_run:
            return None
        r = run.policy.recovery
        horizon = max(r.window, r.stable_after) + 60.0
        if self.ledger.record_attempt(run.unit, at, horizon=horizon) or self.store.persistent:
            return None
        return self._uncounted(run.unit)

    def _history_gap(self, run: Run) -> None:
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
        if gap is None or run.incident is None or run.give_up is GiveUp.GIVEN_UP:
            return  # a run that only found an earlier give-up alerts nothing
        if self.ledger.entry(run.unit).gap_alerted == gap.since:
            return
        if self.ledger.gap_alerted(run.unit, gap.since):
            self.alerting.alert(
                run,
                "firing",
                run.level,
                f"{run.unit}: recovery history not kept since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(gap.since))} ({why}); "
                f"the restart budget is counted in {self.ledger.directory}",
                "history",
            )

    # --- records --------------------------------------------------------------------------

    def _record_step(
        self,
        run: Run,
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

    def _flush_rows(self, run: Run) -> None:
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

    def _outcome(
        self, run: Run, state: State, reason: str, journal: tuple[str, ...] = ()
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

    # --- events ---------------------------------------------------------------------------

    def _emit(self, run: Run, kind: EventKind, **fields: FieldValue) -> None:
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

    def _events_at(
        self, run: Run, moment: Moment, state: State | None = None, *, quiet: bool = False
    ) -> None:
        """The one rule for the events a run holds, applied at each ``moment``.

        Events made on the way to RestartUnit are held (timestamped when made), so
        that the sinks' work does not delay the restart. They are delivered, in
        order, once RestartUnit has been sent, and before anything that may wait
        first: entering a state that waits as a matter of course, or a step about
        to wait (a dependency's own run, whose events must follow ours; probes;
        freeing space; the validate command; the back-off). They are delivered
        when the run ends or raises, except by a run that only found an earlier
        give-up (``quiet``): it drops them, so consumers see no incident activity
        after the GaveUp that ended that incident. From then on events go straight out.
        """
        if run.held is None:
            return
        if moment is Moment.ENTERING and state not in _WAITING_STATES:
            return
        held, run.held = run.held, None
        if moment is Moment.END and quiet:
            return
        for event in held:
            self._deliver_event(event)

    # --- tasks ----------------------------------------------------------------------------

    def _spawn_deferred(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._deferred.add(task)
        task.add_done_callback(self._deferred_done)

    def _deferred_done(self, task: asyncio.Task[None]) -> None:
        self._deferred.discard(task)
        report_failure(task, log)

    def _start_journal(self, run: Run) -> None:
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

    # --- systemd --------------------------------------------------------------------------

    async def _properties(self, unit: str) -> dict[str, Any]:
        return await self.bus.unit_properties(unit)

    async def _control_group(self, unit: str) -> str | None:
        try:
            value = await self.bus.get_property(unit, "ControlGroup", SERVICE_INTERFACE)
        except SystemdError:
            return None
        return str(value) if value else None

    async def _wait_unit(
        self,
        unit: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 -- mirrors SystemdClient.wait_for
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """wait_for on the Unit interface alone: every predicate here reads only it.

        The Service interface's GetAll is the largest reply systemd sends (about
        twice the Unit one); skipping it halves the reads of each wait. ``since``
        (the bus's expectation, see Steps._expect_restart) and ``initial``: no read
        at all.
        """
        if since is not None:
            return await self.bus.wait_for(unit, predicate, timeout, since=since, initial=initial)
        if self.bus.selects_interfaces:
            return await self.bus.wait_for(unit, predicate, timeout, (UNIT_INTERFACE,))
        return await self.bus.wait_for(unit, predicate, timeout)

    async def _result_of(self, unit: str, props: dict[str, Any]) -> str:
        """Result (a Service property) for a message, when the Unit read lacks it."""
        if "Result" in props:
            return str(props["Result"])
        try:
            return str(await self.bus.get_property(unit, "Result", SERVICE_INTERFACE))
        except SystemdError:
            return "unknown"

    def _forget_expectation(self, run: Run) -> None:
        expected, run.call.expected = run.call.expected, None
        if expected is not None:
            self.bus.forget(expected)

    async def _unpin(self, run: Run) -> None:
        if run.call.pinned:
            run.call.pinned = False
            await self.bus.unpin(run.unit)


def template_of(unit: str) -> str:
    """``worker@7.service`` -> ``worker@.service``; "" for a unit that is no instance."""
    prefix, at, rest = unit.partition("@")
    return f"{prefix}@.{rest.rsplit('.', 1)[1]}" if at and "." in rest else ""


def policy_stat(unit: str, policy_dir: Path) -> tuple[int, ...]:
    # os.stat on a joined string: pathlib's join and stat cost more than the
    # syscall, and this runs on every failure (docs/recovery.md, "What it costs").
    base = os.fspath(policy_dir)
    names = [f"{unit}.json"]
    if template := template_of(unit):
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
