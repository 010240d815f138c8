"""Crashes as values, and the opt-in flapping alert (``alert_on``) built on them.

The listener reports every crash of a watched service, including the ones
systemd restarts by itself and nobody else would see, through
:class:`CrashReporter`: a ``Crashed`` event (docs/events.md), and the crash
handed to :class:`FlapWatch`. A service whose policy
says ``alert_on = { restarts = N, within = "10min" }`` gets one firing alert
when it has crashed N times within that window, carrying a digest of those
crashes; then nothing more for that window. When the window ends the service is
judged again: still N crashes within the trailing window, one more firing
alert with the new digest; fewer, the alert is resolved.

Nothing here restarts anything or waits on the listener: :meth:`FlapWatch.crashed`
is a few list operations, and sends are tasks it keeps and closes.

Given a :class:`handlers.flapstate.FlapFile`, the watch survives a restart of the
daemon: each change of a service with ``alert_on`` (a crash, a fire, a resolve) is
written there (off the loop, one write at a time, the latest state wins), and a new
watch loads it: the crashes count on, and an alert that was firing is judged again
a window after its last judgement (resolved, or fired once more).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from handlers.diagnose import invocation_hex
from handlers.events import Event, EventKind, EventSink, FieldValue
from handlers.tasks import report_failure

if TYPE_CHECKING:
    from handlers.alerts import Alert, Alerter
    from handlers.flapstate import FlapFile, FlapRecord
    from unitgen.policy import Policy

log = logging.getLogger(__name__)

__all__ = ["DIGEST_MAX", "Crash", "CrashReporter", "FlapWatch", "digest_text"]

# ExecMainCode: the CLD_* code of the main process's end, as systemctl shows it.
_EXIT_CODES = {1: "exited", 2: "killed", 3: "dumped"}
# Crashes kept per unit, and listed in one alert's digest at most.
DIGEST_MAX = 50

PolicyOf = Callable[[str], "Policy | None"]
AlerterFor = Callable[["Policy"], "Alerter | None"]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Crash:
    """One crash of a service, as systemd's properties told it."""

    at: float  # wall clock, epoch seconds
    result: str  # systemd's Result: exit-code, signal, core-dump, timeout, watchdog...
    exit_code: str  # ExecMainCode as text: exited | killed | dumped
    exit_status: int
    n_restarts: int  # systemd's NRestarts when it crashed
    restarted_by: str  # systemd | ladder

    @classmethod
    def of(cls, props: Mapping[str, Any], restarted_by: str, at: float) -> Crash:
        code, status = props.get("ExecMainCode"), props.get("ExecMainStatus")
        return cls(
            at=at,
            result=str(props.get("Result") or "unknown"),
            exit_code=_EXIT_CODES.get(code, "") if isinstance(code, int) else "",
            exit_status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
            n_restarts=int(props.get("NRestarts") or 0),
            restarted_by=restarted_by,
        )

    def fields(self, invocation: str) -> dict[str, FieldValue]:
        """The Crashed event's details (keys of handlers.public_fields)."""
        out: dict[str, FieldValue] = {
            "unit_result": self.result,
            "exit_status": self.exit_status,
            "n_restarts": self.n_restarts,
            "restarted_by": self.restarted_by,
        }
        if self.exit_code:
            out["exit_code"] = self.exit_code
        if invocation:
            out["invocation_id"] = invocation
        return out

    def digest(self) -> dict[str, FieldValue]:
        return {
            "at": self.at,
            "at_iso": _iso(self.at),
            "result": self.result,
            "exit_code": self.exit_code,
            "exit_status": self.exit_status,
            "n_restarts": self.n_restarts,
            "restarted_by": self.restarted_by,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s"


def digest_text(crashes: list[Crash]) -> str:
    """One line per crash, for texts that have no structure (Slack, e-mail, a summary)."""
    return "; ".join(
        f"{_iso(c.at)} {c.result} ({c.exit_code or '?'} {c.exit_status})" for c in crashes
    )


@dataclass
class _Flap:
    crashes: deque[Crash] = field(default_factory=lambda: deque(maxlen=DIGEST_MAX))
    incident: str = ""  # set while an alert is firing
    started: float = 0.0
    judged: float = 0.0  # when the firing alert was last sent (wall clock)
    follow: asyncio.Task[None] | None = None


class FlapWatch:
    """Counts each unit's crashes against its ``alert_on`` and sends the flapping alerts."""

    def __init__(
        self,
        policy_of: PolicyOf,
        *,
        alerter_for: AlerterFor | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        host: str | None = None,
        state: FlapFile | None = None,
    ) -> None:
        """``state``: where the watch is kept across restarts (loaded here, once);
        None keeps it in memory only."""
        self._policy_of = policy_of
        self._alerter_for = alerter_for
        self._alerters: dict[str, Alerter | None] = {}
        self._clock = clock
        self._sleep = sleep
        self._host = host or socket.gethostname()
        self._units: dict[str, _Flap] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sent: list[Alert] = []  # every alert handed to an alerter, newest last (bounded)
        self._state = state
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._resumed = state is None
        if state is not None:
            for unit, rec in state.load(clock()).items():
                flap = _Flap(incident=rec.incident, started=rec.started, judged=rec.judged)
                flap.crashes.extend(rec.crashes)
                self._units[unit] = flap

    def crashed(self, unit: str, crash: Crash) -> None:
        """Count one crash; start the flapping alert if it makes ``restarts`` in ``within``."""
        if not self._resumed:
            self.resume()
        policy = self._policy_of(unit)
        if policy is None or policy.alert_on is None:
            # The flood path: nothing to count, nothing written. A unit that lost
            # alert_on while firing keeps its entry until its window resolves it.
            flap = self._units.get(unit)
            if flap is not None and flap.follow is None:
                del self._units[unit]
                self._changed()
            return
        rule = policy.alert_on
        flap = self._units.setdefault(unit, _Flap())
        flap.crashes.append(crash)
        if flap.follow is not None:
            self._changed()
            return  # an alert is out for this window; the crash goes in the next digest
        recent = self._recent(flap, rule.within, crash.at)
        if len(recent) >= rule.restarts:
            flap.incident = f"flap-{unit}-{int(crash.at * 1000)}"
            flap.started = recent[0].at
            flap.judged = self._clock()
            self._fire(unit, policy, flap, recent, rule.within)
            flap.follow = self._spawn(self._follow(unit, flap, rule.within), f"flapping {unit}")
        self._changed()

    def resume(self) -> None:
        """Take up what a previous watch left (once; needs the running loop).

        Crashes older than their service's window are dropped; an alert that was
        firing is judged a window after it was last sent, or at once when that
        time has passed or its policy no longer has ``alert_on``.
        """
        if self._resumed:
            return
        self._resumed = True
        now = self._clock()
        changed = False
        for unit, flap in list(self._units.items()):
            policy = self._policy_of(unit)
            rule = policy.alert_on if policy is not None else None
            if flap.incident:
                within = rule.within if rule is not None else 0.0
                delay = max(0.0, min(within, flap.judged + within - now))
                log.info("%s: flapping alert %s resumed", unit, flap.incident)
                flap.follow = self._spawn(
                    self._follow(unit, flap, within, first=delay), f"flapping {unit}"
                )
                continue
            kept = [c for c in flap.crashes if rule is not None and now - c.at <= rule.within]
            if len(kept) != len(flap.crashes):
                changed = True
                flap.crashes.clear()
                flap.crashes.extend(kept)
            if not kept:
                del self._units[unit]
        if changed:
            self._changed()

    @staticmethod
    def _recent(flap: _Flap, within: float, now: float) -> list[Crash]:
        return [c for c in flap.crashes if now - c.at <= within]

    async def _follow(
        self, unit: str, flap: _Flap, within: float, *, first: float | None = None
    ) -> None:
        """Once per window: fire again with a new digest while it flaps, else resolve."""
        delay = within if first is None else first
        while True:
            await self._sleep(delay)
            policy = self._policy_of(unit)
            rule = policy.alert_on if policy is not None else None
            if rule is not None:
                within = rule.within
            delay = within
            now = self._clock()
            recent = self._recent(flap, within, now)
            if policy is not None and rule is not None and len(recent) >= rule.restarts:
                flap.judged = now
                self._fire(unit, policy, flap, recent, rule.within)
                self._changed()
                continue
            if policy is not None:
                self._send(unit, policy, flap, "resolved", f"{unit} stopped flapping", [])
            else:
                log.warning("%s: flapping alert %s ends unsent (no policy)", unit, flap.incident)
            flap.follow = None
            flap.incident = ""
            if rule is None and self._units.get(unit) is flap:
                del self._units[unit]
            self._changed()
            return

    def _fire(
        self, unit: str, policy: Policy, flap: _Flap, recent: list[Crash], within: float
    ) -> None:
        summary = (
            f"{unit} crashed {len(recent)} times within {_span(within)}: {digest_text(recent)}"
        )
        self._send(unit, policy, flap, "firing", summary, recent)

    def _send(
        self,
        unit: str,
        policy: Policy,
        flap: _Flap,
        status: str,
        summary: str,
        recent: list[Crash],
    ) -> None:
        alerter = self._alerter(policy)
        if alerter is None or not alerter.targets:
            log.warning("%s: %s (no alert target)", unit, summary)
            return
        from handlers.alerts import Alert

        now = self._clock()
        alert = Alert(
            unit=unit,
            incident_id=flap.incident,
            level="flapping",
            status="firing" if status == "firing" else "resolved",
            reason="flapping",
            summary=summary,
            attempts=len(recent),
            started_at=flap.started,
            ended_at=now if status == "resolved" else None,
            host=self._host,
            digest=tuple(c.digest() for c in recent),
        )
        self.sent.append(alert)
        del self.sent[:-100]
        self._spawn(self._deliver(alerter, alert), f"flapping alert {unit}")

    @staticmethod
    async def _deliver(alerter: Alerter, alert: Alert) -> None:
        deliveries = await alerter.send(alert)
        failed = [d.error for d in deliveries if not d.ok]
        if failed:
            log.warning(
                "flapping alert for %s not delivered: %s",
                alert.unit,
                "; ".join(e or "failed" for e in failed),
            )

    def _alerter(self, policy: Policy) -> Alerter | None:
        if policy.unit not in self._alerters:
            from unitgen.errors import PolicyError

            try:
                if self._alerter_for is not None:
                    self._alerters[policy.unit] = self._alerter_for(policy)
                else:
                    from handlers.recovery.alerting import default_alerter

                    self._alerters[policy.unit] = default_alerter(policy)
            except PolicyError as exc:
                log.warning("%s: alert targets unusable: %s", policy.unit, exc)
                self._alerters[policy.unit] = None
        return self._alerters[policy.unit]

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        report_failure(task, log)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (bounded) for the alert sends running now; the window timers go on."""
        sends = [t for t in self._tasks if t.get_name().startswith("flapping alert")]
        if sends:
            await asyncio.wait(sends, timeout=timeout)

    async def aclose(self) -> None:
        """Let running sends and the last state write finish within their bound, then
        stop the window timers (a firing alert stays in the state file: the next
        watch takes it up)."""
        await self.drain(10.0)
        await self.flush(10.0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flap in self._units.values():
            flap.follow = None

    # --- the state file --------------------------------------------------------------

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (bounded) until the state file holds every change made so far."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=timeout)

    def _changed(self) -> None:
        """Write the state soon: one writer at a time, each write the latest state."""
        if self._state is None:
            return
        self._dirty = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._dirty = False
            self._state.save(self._records())  # no loop to wait on (a script, a test)
            return
        if self._writer is None or self._writer.done():
            self._writer = self._spawn(self._write(), "flapping state")

    async def _write(self) -> None:
        state = self._state
        while state is not None and self._dirty:
            self._dirty = False
            await asyncio.to_thread(state.save, self._records())

    def _records(self) -> dict[str, FlapRecord]:
        from handlers.flapstate import FlapRecord

        return {
            unit: FlapRecord(tuple(f.crashes), f.incident, f.started, f.judged)
            for unit, f in self._units.items()
        }


class CrashReporter:
    """Each crash: one ``Crashed`` event, and the crash counted for its flapping alert.

    The listener calls :meth:`report` once per crashed invocation. It never raises:
    reporting a crash must not stand in the way of recovering it.
    """

    def __init__(
        self, events: EventSink, flapping: FlapWatch, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.events = events
        self.flapping = flapping
        self._clock = clock
        self.count = 0

    def report(self, unit: str, props: Mapping[str, Any], restarted_by: str) -> None:
        try:
            crash = Crash.of(props, restarted_by, self._clock())
            self.count += 1
            fields = crash.fields(invocation_hex(props.get("InvocationID")))
            self.events.emit(Event(EventKind.CRASHED, unit, "", fields, crash.at))
            self.flapping.crashed(unit, crash)
        except Exception:
            log.exception("%s: reporting a crash failed", unit)
