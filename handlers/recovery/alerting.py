"""The alert side of the engine: once-only alerts, queued behind the restart, sent as tasks.

An alert is queued as asked for, and only after RestartUnit (or when the run
ends) are its targets parsed, its claim made in the history (one per incident
and key, across processes) and its send started: parsing imports the spec's key
table and sending imports ``requests``, which must not delay the restart. Sends are
tasks kept by strong reference; :meth:`Alerting.drain` waits for them (bounded)
so a short-lived CLI process does not lose them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from handlers.diagnose import diagnosis_from
from handlers.ladder import Level
from handlers.recovery.history import level_of, timeline
from handlers.recovery.model import AlerterFactory, Clock, Run
from handlers.store import IncidentRow, Stamp, Store
from unitgen.errors import PolicyError, SystemdError
from unitgen.policy import Policy

if TYPE_CHECKING:
    from handlers.alerts import Alert, Alerter, Delivery

log = logging.getLogger("handlers.recovery")

Status = Literal["firing", "resolved"]
# What the incident-group gate (RecoveryEngine with grouping) says about a unit's alert;
# its second argument is how long the alert has been held already (seconds).
Gate = Literal["send", "hold", "drop"]
AlertGate = Callable[[str, float], Gate]
UnitWait = Callable[[str, Callable[[dict[str, Any]], bool], float], Awaitable[dict[str, Any]]]


def default_alerter(policy: Policy) -> Alerter | None:
    if not policy.alerts:
        return None
    from handlers.alerts import Alerter, AlertTarget

    targets = [AlertTarget.from_mapping(m) for m in policy.alerts]
    return Alerter(targets)


@dataclass(frozen=True)
class _Request:
    """An alert asked for, turned into one (targets parsed, once-only claim) at the flush."""

    unit: str
    policy: Policy
    inc: IncidentRow
    status: Status
    level: Level
    summary: str
    attempts: int
    key: str | None
    at: float


class Alerting:
    """Decides, claims, queues and sends the alerts of one engine."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        host: str,
        dry_run: bool,
        factory: AlerterFactory,
        stamp: Callable[[], Stamp],
        wait_unit: UnitWait,
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.host = host
        self.dry_run = dry_run
        self._factory = factory
        self._stamp = stamp
        self._wait_unit = wait_unit
        self._spawn = spawn
        self.alerters: dict[str, Alerter | None] = {}
        self._queued: list[_Request] = []
        self.pending: set[asyncio.Task[None]] = set()
        # Incident groups: a unit's firing alert may be held for the group window, and
        # dropped when the unit turns out to be covered by its group's one alert.
        self.gate: AlertGate | None = None
        self.hold_for = 0.0
        self._held: list[tuple[float, float, _Request]] = []  # (since, until, request)
        self._release: asyncio.TimerHandle | None = None

    def alerter_for(self, policy: Policy) -> Alerter | None:
        if policy.unit not in self.alerters:
            try:
                self.alerters[policy.unit] = self._factory(policy)
            except PolicyError as exc:
                log.warning("%s: alert targets unusable: %s", policy.unit, exc)
                self.alerters[policy.unit] = None
        return self.alerters[policy.unit]

    def alert(
        self, run: Run, status: Status, level: Level, summary: str, key: str | None = None
    ) -> None:
        """An alert about ``run``'s incident (none before it has one, none in a dry run)."""
        inc = run.incident
        if inc is None or self.dry_run:
            return
        self.send(run.unit, run.policy, inc, status, level, summary, run.used, key)

    def send(
        self,
        unit: str,
        policy: Policy,
        inc: IncidentRow,
        status: Status,
        level: Level,
        summary: str,
        attempts: int,
        key: str | None = None,
    ) -> None:
        """``key``: what makes it once-only; the level for firing alerts, "" for resolved.

        Queued, not sent: parsing the targets and building the alert import the spec's
        key table and requests, which must not delay the restart. Flushed right after
        RestartUnit, and when the run ends.
        """
        self._queued.append(
            _Request(unit, policy, inc, status, level, summary, attempts, key, self.clock.time())
        )

    def _prepare(self, req: _Request) -> tuple[Alerter, Alert, str] | None:
        alerter = self.alerter_for(req.policy)
        if alerter is None or not alerter.targets:
            return None
        key = req.key
        if key is None:
            key = req.level.label if req.status == "firing" else ""
        if not self.store.claim_alert(req.inc.id, key, req.status, req.at):
            return None  # this process or another already sent it
        from handlers.alerts import Alert

        alert = Alert(
            unit=req.unit,
            incident_id=req.inc.id,
            level=req.level.label,
            status=req.status,
            reason=req.inc.classification or "failure",
            summary=req.summary,
            attempts=req.attempts,
            started_at=req.inc.opened.wall,
            ended_at=req.at if req.status == "resolved" else None,
            host=self.host,
        )
        return alerter, alert, key

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        for req in queued:
            if req.status == "firing" and self.gate is not None:
                decision = self.gate(req.unit, 0.0)
                if decision == "drop":
                    continue
                if decision == "hold":
                    now = self.clock.monotonic()
                    self._hold(now, now + self.hold_for, req)
                    continue
            self._dispatch(req)

    def _hold(self, since: float, until: float, req: _Request) -> None:
        self._held.append((since, until, req))
        self._schedule()

    def _schedule(self) -> None:
        if self._release is not None or not self._held:
            return
        due = min(until for _since, until, _req in self._held)
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - self.clock.monotonic())
        self._release = loop.call_later(delay, self._release_held)

    def _release_held(self, *, everything: bool = False) -> None:
        """Each held alert whose window is over is covered by a group now, or goes out."""
        self._release = None
        now = self.clock.monotonic()
        held, self._held = self._held, []
        for since, until, req in held:
            if until > now and not everything:
                self._held.append((since, until, req))
                continue
            decision = "send" if self.gate is None else self.gate(req.unit, now - since)
            if decision == "hold" and not everything:
                self._held.append((since, now + self.hold_for, req))
            elif decision != "drop":
                self._dispatch(req)
        if self._held:
            self._schedule()

    def send_group(self, policy: Policy, alert: Alert, key: str) -> None:
        """A group's alert, once per (group, key, status), through ``policy``'s targets."""
        if self.dry_run:
            return
        alerter = self.alerter_for(policy)
        if alerter is None or not alerter.targets:
            return
        if not self.store.claim_alert(alert.incident_id, key, alert.status, self.clock.time()):
            return
        self._start(alerter, alert, key)

    def _dispatch(self, req: _Request) -> None:
        prepared = self._prepare(req)
        if prepared is not None:
            self._start(*prepared)

    def _start(self, alerter: Alerter, alert: Alert, key: str) -> None:
        task = asyncio.create_task(self._deliver(alerter, alert, key), name=f"alert {alert.unit}")
        self.pending.add(task)
        task.add_done_callback(self._done)

    async def _deliver(self, alerter: Alerter, alert: Alert, key: str) -> None:
        deliveries: list[Delivery] = await alerter.send(alert)
        ok = bool(deliveries) and all(d.ok for d in deliveries)
        detail = "; ".join(d.error or f"{d.target}: ok" for d in deliveries)[:500]
        self.store.record_delivery(
            alert.incident_id, key, alert.status, delivered=ok, detail=detail
        )
        if not ok:
            log.warning("alert for %s not delivered everywhere: %s", alert.unit, detail)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("alert task %s failed: %r", task.get_name(), exc)

    async def drain(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Send what is queued and wait (bounded) for the sends still running."""
        self.flush()
        if self._release is not None:
            self._release.cancel()
        self._release_held(everything=True)
        if not self.pending:
            return
        bound = timeout
        if bound is None:
            bound = (
                max((a.time_bound() for a in self.alerters.values() if a is not None), default=0.0)
                + 1.0
            )
        _done, not_done = await asyncio.wait(set(self.pending), timeout=bound)
        for task in not_done:
            log.warning("alert still unsent at exit; abandoned (%s)", task.get_name())
            task.cancel()
        if not_done:
            await asyncio.gather(*not_done, return_exceptions=True)

    async def resolve(self, unit: str, policy: Policy, inc: IncidentRow) -> None:
        if any(status == "firing" for _level, status in self.store.alerted(inc.id)):
            self.send(unit, policy, inc, "resolved", level_of(inc), f"{unit} is active again", 0)

    def resolve_superseded(self, unit: str, policy: Policy, inc: IncidentRow) -> None:
        """A new incident opens after ``inc`` recovered (the unit stayed up min_uptime):
        ``inc`` is over, whether or not its own wait got to say so (the failure can land
        just as that wait ends, or its process died). Queued; the run flushes it."""
        if self.dry_run:
            return
        if any(status == "firing" for _level, status in self.store.alerted(inc.id)):
            self.send(unit, policy, inc, "resolved", level_of(inc), f"{unit} was active again", 0)

    def resolve_later(self, run: Run, inc: IncidentRow) -> None:
        """Send "resolved" once the unit has stayed up for min_uptime (long-lived engines)."""
        self.resolve_when_up(run.unit, run.policy, inc)

    def resolve_when_up(self, unit: str, policy: Policy, inc: IncidentRow) -> None:
        """:meth:`resolve_later` for an incident by its unit and policy, without a run."""
        alerter = self.alerter_for(policy)
        if alerter is None or not alerter.targets:
            # Nobody to tell: the wait (a LoadUnit and a GetAll, then min_uptime of
            # signals) would end in send() doing nothing.
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
                    await self.resolve(unit, policy, current)
                    # No run ends after this wait to flush it: without this the
                    # alert waited for the next incident of any unit to go out.
                    self.flush()

        self._spawn(later(), f"resolve {unit}")

    async def resolve_reset(self, unit: str, policy: Policy) -> None:
        """Incidents given up or parked (closed 'reset' by the reset), then reset,
        resolve once the unit is seen healthy."""
        now = self._stamp()
        reset_at = self.store.reset_at(unit, now)
        if reset_at is None:
            return
        for inc in self.store.incidents(unit, 20):
            if (
                inc.state in ("gave-up", "reset")
                and inc.closed is not None
                and reset_at >= timeline(inc.closed, now)
            ):
                await self.resolve(unit, policy, inc)
