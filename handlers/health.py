"""Health probes for running units, on their interval, off the event path.

Each unit with a health section gets one task that sleeps its interval and
then, only while the unit is active, runs its probe under a global semaphore
(so a thousand units cannot open a thousand sockets at once). Probes are
coroutines from :mod:`handlers.probes` that bound themselves by their timeout
and run commands and HTTP off the loop, so a slow probe delays nothing but its
own next round. ``failures`` consecutive failures call ``on_unhealthy`` once;
the listener then queues a recovery with reason ``health``; ``successes``
consecutive passes make it healthy again.

Each time a unit becomes active a start period begins (Docker's start_period,
Kubernetes' startupProbe): the start-up probe runs every ``start_interval``,
its failures count for nothing, and ``successes`` passes end the period. Only
if ``start_period`` runs out first is that one escalation, so a service that
takes a minute to open its port is not restarted in a loop.

A unit that is not active has a parked task waiting on an event, not a timer:
with no active probed unit, the scheduler causes no wakeups at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from handlers.events import Event, EventKind, EventSink, NullSink
from handlers.probes import ProbeResult, ProbeSpec, probe
from handlers.tasks import log_failure
from unitgen.model import Health

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    health: Health
    spec: ProbeSpec
    start_spec: ProbeSpec
    active: asyncio.Event
    task: asyncio.Task[None] | None = None
    failures: int = 0
    passes: int = 0
    healthy: bool | None = None
    starting: bool = False
    started_at: float = 0.0  # loop time the current start period began


class HealthScheduler:
    def __init__(
        self,
        on_unhealthy: Callable[[str, str], None],
        *,
        events: EventSink | None = None,
        max_concurrent: int = 8,
        prober: Callable[[ProbeSpec], Awaitable[ProbeResult]] | None = None,
    ) -> None:
        self._on_unhealthy = on_unhealthy
        self._events = events or NullSink()
        self._sem = asyncio.Semaphore(max_concurrent)
        self._prober = prober or probe
        self._watches: dict[str, _Watch] = {}
        self.probes_run = 0

    @property
    def units(self) -> frozenset[str]:
        return frozenset(self._watches)

    def configure(self, healths: Mapping[str, Health]) -> None:
        """Start tasks for new units, stop them for units that lost their section."""
        for unit in list(self._watches):
            if unit not in healths or healths[unit] != self._watches[unit].health:
                self._drop(unit)
        for unit, health in healths.items():
            self.add(unit, health)

    def add(self, unit: str, health: Health) -> None:
        """Watch one more unit (one loaded since the last :meth:`configure`)."""
        if unit in self._watches:
            return
        try:
            spec = ProbeSpec.from_model(health.probe, where=f"{unit}: health.probe")
            start_spec = ProbeSpec.from_model(health.start_probe, where=f"{unit}: health.startup")
        except ValueError as exc:
            log.warning("%s", exc)
            return
        watch = _Watch(health=health, spec=spec, start_spec=start_spec, active=asyncio.Event())
        watch.task = asyncio.create_task(self._run(unit, watch), name=f"health {unit}")
        watch.task.add_done_callback(log_failure(log))
        self._watches[unit] = watch

    def set_active(self, unit: str, active: bool) -> None:
        watch = self._watches.get(unit)
        if watch is None:
            return
        if active:
            if not watch.active.is_set():
                # A new run: a new start period (a listener that starts late gives an
                # old run one too; it ends at the first pass).
                watch.starting = watch.health.start_period > 0
                watch.started_at = asyncio.get_running_loop().time()
                watch.passes = 0
            watch.active.set()
        else:
            watch.active.clear()
            watch.failures = 0
            watch.passes = 0

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for unit in list(self._watches):
            self._drop(unit)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("health task %s failed", task.get_name(), exc_info=result)

    def _drop(self, unit: str) -> None:
        watch = self._watches.pop(unit)
        if watch.task is not None:
            watch.task.cancel()

    async def _run(self, unit: str, watch: _Watch) -> None:
        health = watch.health
        while True:
            await watch.active.wait()
            interval = health.start_interval if watch.starting else health.interval
            await asyncio.sleep(max(0.05, interval))
            if not watch.active.is_set():
                continue
            starting = watch.starting
            async with self._sem:
                result = await self._probe(watch.start_spec if starting else watch.spec)
            self.probes_run += 1
            if starting:
                self._record_start(unit, watch, result)
            else:
                self._record(unit, watch, result)

    def _record_start(self, unit: str, watch: _Watch, result: ProbeResult) -> None:
        health = watch.health
        if result.ok:
            watch.passes += 1
            if watch.passes >= health.successes:
                watch.starting = False
                watch.failures = 0
                log.info("%s: started: %s", unit, result.detail)
                if watch.healthy is not True:
                    watch.healthy = True
                    self._emit(unit, True, result.detail, 0)
            return
        watch.passes = 0
        waited = asyncio.get_running_loop().time() - watch.started_at
        if waited < health.start_period:
            log.debug("%s: still starting (%.1fs): %s", unit, waited, result.detail)
            return
        watch.starting = False
        self._unhealthy(
            unit,
            watch,
            f"not healthy within start_period {health.start_period:g}s: {result.detail}",
            0,
        )

    async def _probe(self, spec: ProbeSpec) -> ProbeResult:
        try:
            # Probes bound themselves; the margin only guards against a broken one.
            result = await asyncio.wait_for(self._prober(spec), spec.timeout + 5.0)
        except TimeoutError:
            return ProbeResult(False, f"{spec.describe()}: probe overran its timeout", 0.0)
        except Exception as exc:
            return ProbeResult(False, f"{spec.describe()}: {type(exc).__name__}", 0.0)
        return result

    def _record(self, unit: str, watch: _Watch, result: ProbeResult) -> None:
        if result.ok:
            watch.failures = 0
            watch.passes += 1
            if watch.healthy is not True and watch.passes >= watch.health.successes:
                watch.healthy = True
                self._emit(unit, True, result.detail, 0)
            return
        watch.passes = 0
        watch.failures += 1
        log.info(
            "%s: health probe failed (%d/%d): %s",
            unit,
            watch.failures,
            watch.health.failures,
            result.detail,
        )
        if watch.failures >= watch.health.failures:
            watch.failures = 0
            self._unhealthy(unit, watch, result.detail, watch.health.failures)

    def _unhealthy(self, unit: str, watch: _Watch, detail: str, failures: int) -> None:
        if watch.healthy is not False:
            watch.healthy = False
            self._emit(unit, False, detail, failures)
        try:
            self._on_unhealthy(unit, detail)
        except Exception:
            log.exception("%s: health escalation failed", unit)

    def _emit(self, unit: str, healthy: bool, detail: str, failures: int) -> None:
        self._events.emit(
            Event(
                EventKind.HEALTH_CHANGED,
                unit,
                "",
                {"healthy": healthy, "detail": detail, "failures": failures},
            )
        )
