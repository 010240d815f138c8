"""The D-Bus listener: follows systemd and runs the recovery ladder the moment it is needed.

How it decides
--------------
On a ``failed`` signal the listener builds a :class:`~handlers.diagnose.UnitView`
of what the signals said and asks :func:`handlers.diagnose.decide`, which says
whether systemd is restarting the unit, whether one round trip must settle it,
and what must be read; the decision, its property sets and the systemd 252
behaviour they rest on live there. The listener carries it out: it reads what
the decision names, stands down, or hands the unit to the ladder once per
InvocationID. It keeps what the signals carry of each watched unit, and what
changes only on a reload, read with the first failure and forgotten on
``Reloading``, ``UnitNew``/``UnitRemoved`` and every reconnect; the trigger
carries that snapshot, so the ladder's diagnose step makes no read of its own.

Data flow
---------
Signals are handled inside the bus reader callback, which only updates a small
per-unit cache and puts the unit in the coalescing queue of
:mod:`handlers.unitqueue` (one entry per unit; a full queue drops, counts and
reconciles). Its workers hand each unit to :meth:`Listener._handle`, one unit
never to two workers at once. Health probes (:mod:`handlers.health`) and parked
units (:mod:`handlers.parkwatch`) only put units in the same queue; crashes go
to :class:`handlers.flapping.CrashReporter`.

Connection life
---------------
connect -> AddMatch -> Subscribe -> reconcile -> READY=1 (first time only) ->
wait for disconnect. A lost bus (dbus-daemon restarted, socket closed) or a
new owner of ``org.freedesktop.systemd1`` leads to reconnect with capped,
jittered exponential backoff, then AddMatch, Subscribe and reconcile again.
``Reloading`` (daemon-reload, daemon-reexec) is a gap: reconcile when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from handlers import bus as busmod
from handlers.bus import SystemdBus
from handlers.busretry import RetryingBus
from handlers.depwait import DependencyWaits, down_dependencies
from handlers.diagnose import (
    SERVICE_LIVE,
    STATIC,
    UNIT_LIVE,
    Action,
    Basis,
    Decision,
    UnitView,
    decide,
    invocation_hex,
)
from handlers.events import EventSink, NullSink
from handlers.flapping import AlerterFor, CrashReporter, FlapWatch
from handlers.flapstate import FlapFile
from handlers.health import HealthScheduler
from handlers.ladder import State
from handlers.listenerstate import ListenerOptions, Stats, UnitState
from handlers.notify import Notifier
from handlers.parkwatch import ParkWatch
from handlers.recoverer import ConnectHook, EngineFactory, Recoverer, TriggerFactory
from handlers.unitqueue import UnitQueue
from handlers.watchset import WatchSet
from unitgen.errors import SystemdError, UnitgenError, UnitNotFoundError
from unitgen.model import Health
from unitgen.paths import Paths

if TYPE_CHECKING:
    from handlers.recovery import Trigger

__all__ = ["Listener", "ListenerOptions", "Stats", "UnitState"]

log = logging.getLogger(__name__)


# STATUS= after recoveries is sent at most this often (seconds).
STATUS_INTERVAL = 0.5

_NO_JOB = (0, "/")
# Outcomes (ladder.State values) whose Recovered or GaveUp event reaches the journal.
_WITH_EVENT = frozenset({"recovered", "gave-up"})


class Listener:
    """``unitgen watch``: one instance per process, run() until stop()."""

    def __init__(
        self,
        paths: Paths,
        engine_factory: EngineFactory,
        *,
        globs: Iterable[str] = (),
        address: str | None = None,
        library: str | None = None,
        events: EventSink | None = None,
        notifier: Notifier | None = None,
        options: ListenerOptions | None = None,
        trigger_factory: TriggerFactory | None = None,
        on_connected: ConnectHook | None = None,
        health: bool = True,
        on_drop: Callable[[str], None] | None = None,
        flapping: FlapWatch | None = None,
        on_systemd_restart: Callable[[str], None] | None = None,
        flap_alerter: AlerterFor | None = None,
    ) -> None:
        """``flapping``: where crashes go for the per-service flapping alert
        (``alert_on``); by default one reading the policies of ``paths`` and
        alerting through ``flap_alerter`` (default: the policy's targets).
        ``on_systemd_restart``: told each time systemd's own restart of a crashed
        watched unit starts (e.g. Metrics.count_restart)."""
        self.paths = paths
        self.scope = paths.scope
        self.watch = WatchSet(paths.policy_dir, globs)
        self.options = options or ListenerOptions()
        self.stats = Stats()
        self.units: dict[str, UnitState] = {}
        self.ready = asyncio.Event()  # set once subscribed and reconciled (READY=1)
        self.connected = asyncio.Event()
        self._address = address
        self._library = library
        self._engine_factory = engine_factory
        self._events = events or NullSink()
        self._notifier = notifier or Notifier({})
        if trigger_factory is None:
            # Imported here: the listener's module loads without the engine.
            from handlers.recovery import Trigger

            trigger_factory = Trigger
        self._trigger = trigger_factory
        self._on_connected = on_connected
        self._on_drop = on_drop  # e.g. Metrics.count_dropped("listener")
        self._on_systemd_restart = on_systemd_restart
        self._bus: SystemdBus | None = None
        self._engine: Recoverer | None = None
        self.queue = UnitQueue(
            self._handle_one,
            max_pending=self.options.max_pending,
            spawn=self._spawn,
            on_drop=self._dropped,
            on_drained=self.request_reconcile,
        )
        self._names: dict[str, str] = {}  # object path -> unit name
        self._stop = asyncio.Event()
        self._gap = asyncio.Event()  # reconcile requested
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health = (
            HealthScheduler(
                self._unhealthy,
                events=self._events,
                max_concurrent=self.options.health_concurrency,
            )
            if health
            else None
        )
        self._rng = random.Random()  # noqa: S311 - backoff jitter only
        self._status_handle: asyncio.TimerHandle | None = None
        self.parked = ParkWatch(
            engine=lambda: self._engine,
            bus=lambda: self._bus,
            enqueue=lambda unit, reason: self._enqueue(unit, reason),
            spawn=self._spawn,
            watched=lambda unit: unit in self.watch,
        )
        # Live views, for the signal path: one set lookup per signal (bench/bench_parking.py).
        self._park_deps, self._parked_units = self.parked.dependencies, self.parked.units
        # Units whose start systemd refused because a dependency failed.
        self.refused = DependencyWaits(lambda unit, reason: self._enqueue(unit, reason))
        self._refused_deps = self.refused.dependencies
        # Units whose incident was left open for systemd's Restart=: the signal that
        # they are active again is what ends it (no failure would come to).
        self._left_to_systemd: set[str] = set()
        if flapping is None:
            # Kept next to the history: a restarted daemon resolves what it left firing.
            state = FlapFile(paths.state_dir)
            flapping = FlapWatch(self.watch.policy, alerter_for=flap_alerter, state=state)
        self.flapping = flapping
        # Every crash, whoever restarts the unit: a Crashed event each.
        self.crashes = CrashReporter(self._events, flapping)

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def bus(self) -> SystemdBus | None:
        return self._bus

    @property
    def engine(self) -> Recoverer | None:
        return self._engine

    async def run(self) -> None:
        """Follow systemd until stop(); the one teardown path is the finally below."""
        self.flapping.resume()
        for i in range(self.options.max_concurrency):
            self._spawn(self.queue.worker(), f"listener worker {i}")
        self._spawn(self._notifier.watchdog_loop(), "watchdog")
        self._spawn(self._gap_loop(), "reconcile")
        delay = self.options.reconnect_initial
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self._session()
                    # Only a connection that lasted resets the backoff: a bus that
                    # drops us at once must not be hammered every 50 ms.
                    if time.monotonic() - started > 10 * self.options.reconnect_max:
                        delay = self.options.reconnect_initial
                except UnitgenError as exc:
                    log.warning("listener: %s; reconnecting in %.2fs", exc, delay)
                if self._stop.is_set():
                    break
                self.stats.reconnects += 1
                self._notifier.status(f"bus lost; reconnecting (attempt {self.stats.reconnects})")
                await self._sleep_or_stop(delay * (1 + self._rng.uniform(0, 0.2)))
                delay = min(self.options.reconnect_max, delay * 2)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        if self._status_handle is not None:
            self._status_handle.cancel()
            self._status_handle = None
        self._notifier.stopping("stopping")
        self.connected.clear()
        if self._health is not None:
            await self._health.close()
        await self.parked.close()
        await self.flapping.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                await engine.aclose()
            except Exception:
                log.exception("closing the recovery engine failed")
        await self._drop_bus()
        self._notifier.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("listener task %s failed", task.get_name(), exc_info=exc)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _drop_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.close()

    async def _session(self) -> None:
        """One connection: set up, reconcile, then wait for it to end."""
        bus = await SystemdBus.connect(self.scope, self._address, library=self._library)
        try:
            bus.add_signal_callback(self._on_signal)
            # Whatever happened while disconnected was not seen: read afresh.
            for state in self.units.values():
                state.forget()
            for rule in busmod.signal_rules():
                await bus.add_match(rule)
            await bus.subscribe()
            self._bus = bus
            if self._engine is None:
                self._engine = self._engine_factory(bus)
                # Runs that only wait for their cause get a worker standing in for them.
                self._engine.set_wait_hook(self.queue.cause_wait)
                self._engine.on_parking = self.parked.changed
            else:
                # A RetryingBus (handlers/busretry.py) carries the ladder's calls that the
                # lost connection failed over to this one; anything else is replaced.
                if isinstance(self._engine.bus, RetryingBus):
                    self._engine.bus.attach(bus)
                else:
                    self._engine.bus = bus
            if self._on_connected is not None:
                await self._on_connected(bus)
            await self._reconcile(bus)
            self.connected.set()
            if not self.ready.is_set():
                self.ready.set()
                self._notifier.ready(self._status_line())
            else:
                self._notifier.status(self._status_line())
            log.info("listener subscribed (%s, dbus-%s)", self.scope.value, bus.lib.name)
            stop = asyncio.ensure_future(self._stop.wait())
            gone = asyncio.ensure_future(bus.wait_disconnected())
            try:
                await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (stop, gone):
                    fut.cancel()
                await asyncio.gather(stop, gone, return_exceptions=True)
            if not self._stop.is_set():
                log.warning("listener: bus connection lost")
        finally:
            self.connected.clear()
            if self._bus is bus:
                await self._drop_bus()
            else:
                await bus.close()  # lost before it was installed

    # -- reconciliation --------------------------------------------------------------

    def request_reconcile(self) -> None:
        self._gap.set()

    async def _gap_loop(self) -> None:
        while True:
            await self._gap.wait()
            self._gap.clear()
            bus = self._bus
            if bus is None:
                continue
            try:
                await self._reconcile(bus)
            except UnitgenError as exc:
                log.warning("reconcile failed: %s", exc)

    async def _reconcile(self, bus: SystemdBus) -> None:
        """Re-read the watch set and every watched unit's state; queue the failed ones."""
        self.stats.reconciles += 1
        self.watch.rescan()
        patterns = self.watch.patterns()
        # No patterns would mean "every unit" to ListUnitsByPatterns.
        rows = await bus.list_units(patterns) if patterns else []
        healths: dict[str, Health] = {}
        for row in rows:
            if row.name not in self.watch:
                continue
            self._names[row.path] = row.name
            state = self.units.setdefault(row.name, UnitState())
            state.active = row.active_state
            health = self._health_of(row.name)
            if health is not None:
                healths[row.name] = health
            if row.active_state == "failed":
                self._enqueue(row.name, "failed")
        self._unowned_incidents()
        self.parked.register()
        self._resolve_orphaned()
        if self._health is not None:
            self._health.configure(healths)
            for unit in healths:
                self._health.set_active(unit, self.units[unit].active == "active")
        self._notifier.status(self._status_line())

    def _unowned_incidents(self) -> None:
        """Open incidents no run works on, found at every reconciliation.

        Owner died (a kill -9'd daemon): queued, and the engine adopts the incident
        when it takes the unit's lock. A failed unit is queued anyway; one the dead
        owner's restart already brought up is not failed, and its incident would
        stay open without this. Left to systemd's Restart= (maybe by a dead
        daemon): ended once the unit is seen active.
        """
        if self._engine is None:
            return
        try:
            found = self._engine.unowned_incidents()
        except UnitgenError as exc:  # the history or the lock directory refused
            log.warning("looking for unowned incidents failed: %s", exc)
            return
        for unit in found.interrupted:
            if unit in self.watch:
                self._enqueue(unit, "resume")
        for unit in found.left_to_systemd:
            if unit in self.watch:
                self._systemd_has(unit)

    def _watch_health(self, unit: str) -> None:
        # Loaded since the last reconcile (`systemctl start` of an unloaded unit): its
        # probes start now, not at the next daemon-reload.
        if self._health is None or unit in self._health.units:
            return
        health = self._health_of(unit)
        if health is not None:
            self._health.add(unit, health)

    def _systemd_has(self, unit: str) -> None:
        state = self.units.get(unit)
        if state is not None and state.active == "active":
            self._enqueue(unit, "systemd-restarted")  # already up: end it now
        else:
            self._left_to_systemd.add(unit)

    def _resolve_orphaned(self) -> None:
        """Send the "resolved" alerts a dead owner left unsent (an alert would otherwise
        stay firing at its receiver for good although the unit is up)."""
        if self._engine is None:
            return
        try:
            self._engine.resolve_orphaned(
                lambda unit: (
                    unit in self.watch
                    and unit in self.units
                    and self.units[unit].active == "active"
                )
            )
        except UnitgenError as exc:  # the history refused: reconciliation goes on
            log.warning("looking for unresolved alerts failed: %s", exc)

    def _health_of(self, unit: str) -> Health | None:
        policy = self.watch.policy(unit)
        return policy.health if policy is not None else None

    def _status_line(self) -> str:
        failed = sum(1 for s in self.units.values() if s.active == "failed")
        return (
            f"watching {len(self.units)} units, {failed} failed, "
            f"{self.stats.recoveries} recoveries, {self.queue.dropped} dropped"
        )

    # -- signals (runs inside the bus reader: no awaits, no I/O) ----------------------

    def _on_signal(self, msg: Any) -> None:
        self.stats.signals += 1
        try:
            self._route(msg)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            # Only systemd and the bus daemon can send what the match rules let
            # through, but a malformed body must cost one log line, not the listener.
            self.stats.malformed += 1
            log.warning("ignoring malformed %s signal", getattr(msg, "member", "?"))

    def _route(self, msg: Any) -> None:
        member = msg.member
        if member == "PropertiesChanged":
            self._on_properties(msg)
        elif member == "JobRemoved":
            # (id, job, unit, result): a failed start job may leave a failed unit;
            # "dependency": its start was refused, a dependency having failed.
            body = msg.body
            if len(body) == 4 and body[3] in ("failed", "dependency") and body[2] in self.watch:
                self._enqueue(body[2], "refused" if body[3] == "dependency" else "job")
        elif member == "UnitNew":
            name, path = msg.body
            if name in self.watch:
                self._names[path] = name
                self.units.setdefault(name, UnitState()).forget()
                self._watch_health(name)
        elif member == "UnitRemoved":
            name, path = msg.body
            state = self.units.get(name)
            if state is not None:
                # Unloaded units have no state to follow; keep "handled" for dedupe.
                state.active = ""
                state.forget()
        elif member == "Reloading":
            # Unit files may have changed (Restart=, dependencies): read them afresh.
            for state in self.units.values():
                state.static = None
            if msg.body and msg.body[0] is False:
                self.request_reconcile()
        elif member == "NameOwnerChanged":
            _name, _old, new = msg.body
            if new:
                log.info("systemd re-took its bus name; resubscribing")
                self._spawn(self._resubscribe(), "resubscribe")

    def _on_properties(self, msg: Any) -> None:
        path = msg.path
        name = self._names.get(path)
        if name is None:
            name = busmod.unit_from_path(path)
            if name is None:
                return
            if len(self._names) > 200_000:
                self._names.clear()
            self._names[path] = name
        if name in self._park_deps:
            # A dependency a parked unit waits for; it need not be watched itself.
            self.parked.dependency_signal(name, msg.body)
        if name in self._refused_deps:
            self.refused.signal(name, msg.body)
        if name not in self.watch:
            return
        interface, changed = msg.body[0], msg.body[1]
        state = self.units.get(name)
        if state is None:
            state = self.units[name] = UnitState()
        live = state.live
        # The flood path: plain loops over a few keys beat set operations on the
        # properties systemd sends (bench_listener.py flood; docs/listener.md).
        if interface == busmod.SERVICE:
            # Sent just before the Unit interface's signal of the same state.
            for key in SERVICE_LIVE:
                value = changed.get(key)
                if value is not None:
                    live[key] = value.value
            return
        if "ActiveState" not in changed:
            return
        for key in UNIT_LIVE:
            value = changed.get(key)
            if value is not None:
                live[key] = value.value
        active = state.active = live["ActiveState"]
        if active == "active" and name in self._left_to_systemd:
            self._left_to_systemd.discard(name)
            self._enqueue(name, "systemd-restarted")
        if active == "active" and name in self._parked_units:
            self.parked.unit_active(name)
        if name in self.refused and active != "inactive":
            self.refused.forget(name)  # started, or failed: the usual paths take it
        if live.get("SubState") == "auto-restart":
            state.auto_restart = invocation_hex(live.get("InvocationID"))
            if state.auto_restart != state.crashed and live.get("Result", "success") != "success":
                # systemd restarts it itself: nothing else would report this crash. Out
                # of the bus reader: the sinks write to the journal and the bus.
                state.crashed = state.auto_restart
                asyncio.get_running_loop().call_soon(
                    self.crashes.report, name, dict(live), "systemd"
                )
        elif (
            state.auto_restart
            and state.auto_restart == state.crashed != state.restarted
            and active in ("activating", "active")
        ):
            # Out of auto-restart into a start: systemd's restart of the crash ran (a
            # refused one goes to dead, then failed, and is the ladder's).
            state.restarted = state.auto_restart
            if self._on_systemd_restart is not None:
                try:
                    self._on_systemd_restart(name)
                except Exception:
                    log.exception("restart counter failed")
        if self._health is not None:
            self._health.set_active(name, active == "active")
        if active == "failed":
            self.stats.failed_signals += 1
            self._enqueue(name, "failed")

    async def _resubscribe(self) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            # A new systemd instance knows nothing of our subscription.
            await bus.subscribe(force=True)
        except SystemdError as exc:
            log.warning("resubscribe failed: %s", exc)
        self.request_reconcile()

    # -- the queue --------------------------------------------------------------------

    def _enqueue(self, unit: str, reason: str) -> None:
        self.queue.put(unit, reason)

    def _dropped(self) -> None:
        if self._on_drop is not None:
            self._on_drop("listener")

    async def _handle_one(self, unit: str, reasons: set[str]) -> None:
        await self.connected.wait()
        try:
            await self._handle(unit, self.units.setdefault(unit, UnitState()), reasons)
        except UnitgenError as exc:
            self.stats.recovery_errors += 1
            log.warning("%s: %s", unit, exc)
        except Exception:
            self.stats.recovery_errors += 1
            log.exception("%s: handling failed", unit)

    async def _handle(self, unit: str, state: UnitState, reasons: set[str]) -> None:
        bus, engine = self._bus, self._engine
        if bus is None or engine is None:
            self.queue.defer(unit, reasons)
            return
        if "unpark" in reasons:
            # A parked unit's retry: a fresh, bounded run of the ladder, which also
            # sees any failure coalesced with it.
            trigger = self._trigger(source="parked", reason=self.parked.reason(unit))
            await self._recover(engine, unit, trigger)
            return
        if "health" in reasons and not (reasons - {"health"}):
            if self.parked.swallows_health_failure(unit):
                return
            self.stats.health_escalations += 1
            trigger = self._trigger(source="health", reason="health")
            await self._recover(engine, unit, trigger)
            return
        if reasons == {"dependency-back"}:
            # Its start was refused while a dependency was down (handlers/depwait.py);
            # the dependency is back: one ladder run starts it, within its budget.
            trigger = self._trigger(source="dependency", reason=self.refused.reason(unit))
            await self._recover(engine, unit, trigger)
            return
        if reasons == {"systemd-restarted"}:
            # Its incident was left to systemd's Restart=, which brought it up: a run
            # that finds it active closes the incident and resolves its alert.
            trigger = self._trigger(source="reconcile", reason="systemd-restarted")
            await self._recover(engine, unit, trigger)
            return
        if reasons == {"resume"}:
            # An incident its owner left: the engine adopts it whatever the unit's state.
            await self._recover(engine, unit, self._trigger(source="reconcile", reason="resume"))
            return
        current = await self._current(bus, unit, state)
        if current is None:
            return
        props, view, decision = current
        state.active = view.active_state
        if decision.action is not Action.RECOVER:
            if decision.action is Action.STAND_DOWN:
                self.stats.systemd_restarting += 1
                # Only while the answer still shows the crashed run: once systemd has
                # started the next one, its InvocationID is not the one that crashed
                # (and the auto-restart signal reported that one).
                if props.get("ActiveState") == "failed" or props.get("SubState") == "auto-restart":
                    self._crashed(unit, state, props, "systemd")
            elif "refused" in reasons and view.active_state == "inactive":
                down = await down_dependencies(bus, unit)
                if down is not None:
                    self.refused.wait(unit, down)
            return
        inv = view.invocation
        if inv and inv == state.handled:
            self.stats.duplicates += 1
            return
        state.handled = inv
        self._crashed(unit, state, props, "ladder")
        # The trigger carries the diagnosis's properties when they are all known, and
        # says systemd was seen not restarting the unit, so the ladder neither reads
        # them again nor waits for an auto-restart that cannot come.
        trigger = self._trigger(
            source="listener",
            invocation_id=inv,
            result=decision.result,
            snapshot=props if view.complete else None,
            settled=True,
        )
        try:
            await self._recover(engine, unit, trigger)
        except BaseException:
            # Not handled after all (bus lost mid-ladder): let reconciliation retry it.
            state.handled = ""
            raise

    @staticmethod
    def _view(state: UnitState, props: Mapping[str, Any], *, answered: bool) -> UnitView:
        return UnitView.of(
            props,
            settings_known=state.static is not None,
            signalled=all(k in state.live for k in SERVICE_LIVE),
            answered=answered,
            last_auto_restart=state.auto_restart,
        )

    async def _current(
        self, bus: SystemdBus, unit: str, state: UnitState
    ) -> tuple[dict[str, Any], UnitView, Decision] | None:
        """The unit's properties as far as the decision needs them, their view, and
        the decision.

        None: no such unit. The first failure since a (re)connect or reload reads
        the unit once (the read is the decision and the diagnosis both); afterwards
        the signals decide alone where they can, and otherwise one round trip of a
        few small Gets, sent together, settles whether systemd is restarting it.
        """
        props = {**state.static, **state.live} if state.static is not None else dict(state.live)
        view = self._view(state, props, answered=False)
        decision = decide(view)
        if decision.action is Action.READ:
            # Seen in signals, the unit is loaded under its own name, so its path is
            # known and LoadUnit (a round trip systemd resolves aliases with) is not
            # needed: a read on a unit path loads the unit if it was unloaded since.
            path = busmod.unit_path(unit) if view.signalled else None
            try:
                read = await bus.unit_properties(unit, service_keys=decision.reads, path=path)
            except UnitNotFoundError:
                return None
            state.static = {key: read[key] for key in STATIC if key in read}
            props = {**state.live, **read}
        elif decision.action is Action.ASK:
            try:
                # Job too: a job still queued (an operator's start) is someone acting on it.
                values = await asyncio.gather(
                    *(bus.get_property(unit, key) for key in decision.reads)
                )
            except UnitNotFoundError:
                return None
            except SystemdError:
                # Not loaded any more (UnknownObject): ask the slow way, which loads it.
                state.static = None
                return await self._current(bus, unit, state)
            props.update(zip(decision.reads, values, strict=True))
        else:
            if decision.basis is Basis.START_LIMIT:
                self.stats.start_limit += 1
            elif decision.without_read:
                self.stats.decided_without_read += 1
            if decision.job_refused:
                props["Job"] = _NO_JOB
            return props, view, decision
        view = self._view(state, props, answered=True)
        return props, view, decide(view)

    async def _recover(self, engine: Recoverer, unit: str, trigger: Trigger) -> None:
        started = time.monotonic()
        outcome = await engine.recover(unit, trigger)
        self.stats.recoveries += 1
        if outcome.state is State.WAITING_FOR_SYSTEMD and outcome.incident_id:
            self._systemd_has(unit)
        else:
            self._left_to_systemd.discard(unit)
        result = outcome.state.value
        # Recovered and gave-up at debug: their journal entries already say so, with
        # the incident and the duration, and under systemd stderr is the journal too
        # (a burst of 200 logged every recovery twice). Outcomes without an event
        # (systemd restarting it, nothing to do, a recovery already running) stay.
        log.log(
            logging.DEBUG if result in _WITH_EVENT else logging.INFO,
            "%s: %s in %.3fs",
            unit,
            result,
            time.monotonic() - started,
        )
        self._status_soon()

    def _status_soon(self) -> None:
        """Send STATUS= after a recovery, at most once per STATUS_INTERVAL.

        The line counts every watched unit; a burst of 200 recoveries among 1,000
        units must not count them 200 times for a line `systemctl status` shows.
        """
        if self._status_handle is None and self._notifier.enabled:
            loop = asyncio.get_running_loop()
            self._status_handle = loop.call_later(STATUS_INTERVAL, self._status_now)

    def _status_now(self) -> None:
        self._status_handle = None
        self._notifier.status(self._status_line())

    # -- crashes ----------------------------------------------------------------------

    def _crashed(
        self, unit: str, state: UnitState, props: Mapping[str, Any], restarted_by: str
    ) -> None:
        """Report the crash once per crashed invocation (never raises)."""
        invocation = invocation_hex(props.get("InvocationID"))
        if invocation and invocation == state.crashed:
            return
        state.crashed = invocation
        self.crashes.report(unit, props, restarted_by)

    def _unhealthy(self, unit: str, detail: str) -> None:
        log.warning("%s: unhealthy: %s", unit, detail)
        self._enqueue(unit, "health")
