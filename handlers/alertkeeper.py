"""Re-sends active Alertmanager alerts, the way Alertmanager's clients are meant to.

Alertmanager keeps alerts in memory and expects each client to re-send every
alert that is still firing, well before its ``endsAt``: a restarted
Alertmanager (or a new member of a cluster) learns them again from the next
re-send, and an alert whose sender died ends by itself a few intervals later.
:class:`AlertKeeper` holds the firing alerts of a long-lived process
(``unitgen watch``) and re-sends each every ``resend_interval`` of its target
(30 s to 3 min) until its ``resolved`` is sent; ``endsAt`` is
``ENDS_AFTER_INTERVALS`` intervals ahead (handlers.alertmodel).

A re-send is one :meth:`Alerter.resend` task: bounded like any send, off the
loop (daemon threads), never raising. One task runs the timer; :meth:`aclose`
is the one way to stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handlers.tasks import report_failure

if TYPE_CHECKING:
    from handlers.alerts import Alert, Alerter, AlertTarget
    from handlers.recovery.model import AlerterFactory
    from handlers.store import Store
    from unitgen.policy import Policy

log = logging.getLogger(__name__)

__all__ = ["MAX_KEPT", "AlertKeeper", "keeping_factory", "readopt"]

# Firing alerts kept at most; past this the oldest is let go (it still ends at endsAt).
MAX_KEPT = 10_000

_Key = tuple[str, str, str]  # target name, unit, incident


@dataclass
class _Kept:
    alerter: Alerter
    target: AlertTarget
    alert: Alert
    due: float  # monotonic


class AlertKeeper:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: dict[_Key, _Kept] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.resends = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep(
        self, alerter: Alerter, target: AlertTarget, alert: Alert, *, now: bool = False
    ) -> None:
        """Firing: re-send it from one interval on (``now``: at once), replacing an
        earlier level of the same incident. Resolved: stop re-sending it."""
        key = (target.name, alert.unit, alert.incident_id)
        if alert.status != "firing" or self._closed:
            self._kept.pop(key, None)
            return
        self._kept.pop(key, None)
        due = self._clock() + (0.0 if now else target.resend_interval)
        self._kept[key] = _Kept(alerter, target, alert, due)
        while len(self._kept) > MAX_KEPT:
            self._kept.pop(next(iter(self._kept)))
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._run())
            self._timer.set_name("alertmanager re-send")
            self._timer.add_done_callback(self._timer_done)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            for kept in list(self._kept.values()):
                if kept.due <= now:
                    kept.due = now + kept.target.resend_interval
                    self._send(kept)
            wait = min((k.due for k in self._kept.values()), default=now + 3600.0) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    def _send(self, kept: _Kept) -> None:
        self.resends += 1
        task = asyncio.ensure_future(kept.alerter.resend(kept.target, kept.alert))
        task.set_name(f"alertmanager re-send {kept.alert.unit}")
        self._sends.add(task)
        task.add_done_callback(self._send_done)

    def _send_done(self, task: asyncio.Task[Any]) -> None:
        self._sends.discard(task)
        report_failure(task, log)

    def _timer_done(self, task: asyncio.Task[None]) -> None:
        report_failure(task, log)

    async def aclose(self) -> None:
        """Stop re-sending; re-sends in flight are cancelled (the alerts end at endsAt)."""
        self._closed = True
        self._kept.clear()
        tasks = [*self._sends, *([self._timer] if self._timer is not None else [])]
        self._timer = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def keeping_factory(keeper: AlertKeeper) -> AlerterFactory:
    """The engine's alerter factory, with ``keeper`` re-sending alertmanager alerts."""

    def factory(policy: Policy) -> Alerter | None:
        if not policy.alerts:
            return None
        from handlers.alerts import Alerter, AlertTarget

        targets = [AlertTarget.from_mapping(m) for m in policy.alerts]
        return Alerter(targets, keeper=keeper)

    return factory


def readopt(
    keeper: AlertKeeper,
    store: Store,
    alerter_for: Callable[[str], Alerter | None],
    host: str,
    *,
    limit: int = 10_000,
) -> int:
    """Keep again, and re-send at once, what a previous daemon kept: the firing alert
    of each unit whose last incident was given up and never resolved.

    The keeper lives in memory; without this, a restarted ``unitgen watch`` would let
    such an alert end at its ``endsAt`` while the unit is still given up. The alert
    has the labels the ladder sent (unit, host, incident, its opening reason), so
    Alertmanager takes it for the same alert. Returns how many were kept.
    """
    from handlers.alerts import Alert
    from handlers.recovery.history import level_of

    kept = 0
    for unit in store.units()[:limit]:
        inc = store.last_incident(unit)
        if inc is None or inc.state != "gave-up":
            continue
        statuses = {status for _level, status in store.alerted(inc.id)}
        if "firing" not in statuses or "resolved" in statuses:
            continue
        alerter = alerter_for(unit)
        if alerter is None:
            continue
        alert = Alert(
            unit=unit,
            incident_id=inc.id,
            level=level_of(inc).label,
            status="firing",
            reason=inc.classification or "failure",
            summary=f"{unit} is still given up (re-sent by a restarted unitgen watch)",
            attempts=len(store.attempts(inc.id)),
            started_at=inc.opened.wall,
            ended_at=None,
            host=host,
        )
        for target in alerter.targets:
            if target.type == "alertmanager":
                keeper.keep(alerter, target, alert, now=True)
                kept += 1
    return kept
