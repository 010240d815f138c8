"""``unitgen watch``: the D-Bus listener daemon (see handlers/listener.py, docs/listener.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handlers.alerts import Alerter
    from handlers.listener import Listener
    from handlers.recovery import RecoveryEngine

HELP = "run the D-Bus listener daemon"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", action="store_true", help="follow the user manager")
    parser.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="GLOB",
        help="also watch units matching GLOB (repeatable); policies are always watched",
    )
    parser.add_argument(
        "--dbus",
        choices=("next", "fast"),
        default=None,
        help="D-Bus library (default: $UNITGEN_DBUS, else dbus-fast if installed)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=32,
        metavar="N",
        help="units recovered at once (default: 32)",
    )
    parser.add_argument("--no-health", action="store_true", help="do not run health probes")
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="do not own org.unitgen.Recovery1 (no event stream, no Recover hand-off)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on a loopback address (e.g. 127.0.0.1:9464)",
    )
    parser.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write metrics for node_exporter's textfile collector",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every decision")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os
    import sys

    from unitgen.errors import UsageError

    if args.max_concurrency < 1:
        raise UsageError(
            f"--max-concurrency: expected a positive number, got {args.max_concurrency}"
        )
    for glob in args.unit:
        if not glob or "/" in glob or len(glob) > 256:
            raise UsageError(f"--unit {glob!r}: expected a unit name glob like 'worker@*.service'")
    # Under systemd, journald adds its own timestamps.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format=fmt, stream=sys.stderr
    )
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from unitgen.errors import UnitgenError

    log = logging.getLogger("unitgen.watch")

    from handlers.alertkeeper import AlertKeeper, keeping_factory, readopt
    from handlers.bus import SystemdBus
    from handlers.events import FanOut
    from handlers.journal import JournalSink
    from handlers.listener import Listener, ListenerOptions
    from handlers.listening import ListeningMarker
    from handlers.metrics import Metrics, publisher_for
    from handlers.notify import Notifier
    from handlers.recovery import LISTENER_SOURCES, RecoveryEngine
    from unitgen.paths import detect_scope, listening_marker, paths_for

    scope = detect_scope(True if args.user else None)
    paths = paths_for(scope)
    metrics = Metrics()
    # Validated before anything starts: a typo in the unit file fails the start.
    publisher = publisher_for(metrics, args.metrics_listen, args.metrics_textfile)
    events = FanOut([metrics, JournalSink(on_drop=metrics.count_dropped)])
    service = None
    engines: list[RecoveryEngine] = []
    # A long-lived process re-sends its firing Alertmanager alerts (docs/alerts.md).
    keeper = AlertKeeper()

    from unitgen.policy import load_host_restart_rate

    # Read before anything starts: a broken file fails the start with one line.
    restart_rate = load_host_restart_rate(paths.policy_dir)

    def make_engine(bus: SystemdBus) -> RecoveryEngine:
        from handlers.busretry import RetryingBus

        # Operators' and OnFailure= hand-offs still get journal lines in their reply.
        # The ladder outlives a bus restart: the listener attaches each new connection.
        # Failures sharing a cause are grouped (handlers/correlation.py).
        engine = RecoveryEngine(
            RetryingBus(bus),
            paths,
            events=events,
            journal_skip=LISTENER_SOURCES,
            correlate=True,
            max_restarts_per_second=restart_rate,
            alerter_factory=keeping_factory(keeper),
        )
        engines.append(engine)
        if len(engines) == 1:
            readopt_alerts(engine)
        return engine

    def readopt_alerts(engine: RecoveryEngine) -> None:
        # The keeper of the previous daemon died with it: given-up units' alerts would
        # end at their endsAt while the units are still down.
        from unitgen.policy import load_policy

        def alerter_for(unit: str) -> Alerter | None:
            try:
                return engine.alerting.alerter_for(load_policy(unit, paths.policy_dir))
            except UnitgenError as exc:
                log.warning("%s", exc)
                return None

        try:
            kept = readopt(keeper, engine.store, alerter_for, engine.host)
        except UnitgenError as exc:
            log.warning("re-sending the alerts of given-up units: %s", exc)
            return
        if kept:
            log.info("re-sending %d firing Alertmanager alert(s) of given-up units", kept)

    api: SystemdBus | None = None
    api_watch: asyncio.Task[None] | None = None
    # The listener's reconnect and keep_exported may both export: one at a time.
    exporting = asyncio.Lock()

    async def keep_exported(bus: SystemdBus, current: SystemdBus) -> None:
        # The API's own connection lost while the listener's is fine: export again.
        # (When both go, the listener reconnects and calls export itself.)
        await current.wait_disconnected()
        if not bus.connected:
            return
        log.warning("event stream connection lost; exporting on a new one")
        await asyncio.sleep(0.5)  # not in a tight loop against a bus that drops us
        if bus.connected and api is current:
            await export(bus)

    def watch_failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("event stream watch failed", exc_info=task.exception())

    async def export(bus: SystemdBus) -> None:
        if args.no_export or not engines:
            return
        async with exporting:
            await export_now(bus)

    async def export_now(bus: SystemdBus) -> None:
        nonlocal service, api, api_watch
        if api_watch is not None and api_watch is not asyncio.current_task():
            api_watch.cancel()
        api_watch = None
        from handlers.dbus_api import RecoveryService

        if service is None:
            service = RecoveryService(_Backend(engines[0]), on_drop=metrics.count_dropped)
            events.add(service)
        try:
            # The API gets a connection of its own: what callers send and what we
            # answer them never queues in front of systemd's signals and replies.
            if api is not None:
                await service.detach()
                await api.close()
                api = None
            api = await SystemdBus.connect(bus.scope, library=bus.lib)
            await service.attach(api.raw)
            api_watch = asyncio.ensure_future(keep_exported(bus, api))
            api_watch.add_done_callback(watch_failed)
        except UnitgenError as exc:
            # Recovery matters more than the event stream: carry on without it.
            # The OnFailure= path then runs the ladder itself (handlers/handoff.py).
            log.warning("event stream not exported: %s", exc)

    marker = ListeningMarker(listening_marker(scope))
    # A marker left by a previous daemon must not stand for this one before it listens.
    marker.clear()
    marking: asyncio.Task[None] | None = None

    async def mark_while_listening(bus: SystemdBus) -> None:
        # The listener sets `connected` once this connection's reconciliation is done:
        # from then on it sees every failure, so the OnFailure= oneshot may be skipped.
        await listener.connected.wait()
        if listener.bus is not bus or not bus.connected:
            return  # this connection ended before it was ready; the next one marks
        marker.set()
        try:
            await bus.wait_disconnected()
        finally:
            marker.clear()

    def marking_failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("listening marker task failed", exc_info=task.exception())
            marker.clear()

    async def on_connected(bus: SystemdBus) -> None:
        nonlocal marking
        if marking is not None:
            marking.cancel()
        marking = asyncio.ensure_future(mark_while_listening(bus))
        marking.add_done_callback(marking_failed)
        await export(bus)

    def stop() -> None:
        # Before anything else: failures from now on go to the OnFailure= fallback.
        marker.close()
        listener.stop()

    listener = Listener(
        paths,
        make_engine,
        globs=args.unit,
        library=args.dbus,
        events=events,
        notifier=Notifier(),
        options=ListenerOptions(max_concurrency=args.max_concurrency),
        on_connected=on_connected,
        health=not args.no_health,
        on_drop=metrics.count_dropped,
        on_systemd_restart=metrics.count_restart,
        flap_alerter=keeping_factory(keeper),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        if publisher is not None:
            await publisher.start()
        await listener.run()
    finally:
        await keeper.aclose()
        marker.close()
        if marking is not None:
            marking.cancel()
            await asyncio.gather(marking, return_exceptions=True)
        if api_watch is not None:
            api_watch.cancel()
            await asyncio.gather(api_watch, return_exceptions=True)
        if service is not None:
            await service.close()
        if api is not None:
            await api.close()
        # Only once the bus name is released: a recovery unit started while this
        # daemon still owned it would hand its failure back to a daemon shutting down.
        if marker.used:
            await hand_over(listener, args.dbus)
        if publisher is not None:
            await publisher.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


async def hand_over(listener: Listener, library: str | None) -> None:
    """A stopping daemon's unfinished failures go to the OnFailure= fallback."""
    import asyncio
    import logging

    from handlers.bus import SystemdBus
    from handlers.listening import hand_over_failed
    from unitgen.errors import UnitgenError

    async def run() -> None:
        bus = await SystemdBus.connect(listener.scope, library=library)
        try:
            await hand_over_failed(bus, listener.watch, listener.paths.database)
        finally:
            await bus.close()

    try:
        # Well inside the unit's TimeoutStopSec=: a stop must not hang on a slow bus.
        await asyncio.wait_for(run(), 5.0)
    except (UnitgenError, TimeoutError) as exc:
        logging.getLogger("unitgen.watch").warning("handing over on stop failed: %s", exc)


class _Backend:
    """org.unitgen.Recovery1's methods, served by the listener's own engine."""

    def __init__(self, engine: RecoveryEngine) -> None:
        self._engine = engine

    async def recover(self, unit: str, trigger: str) -> object:
        from handlers.recovery import Trigger

        # The OnFailure= unit hands its failure over; anything else is an operator.
        if trigger == "onfailure":
            return await self._engine.recover(unit, Trigger(source="onfailure"))
        return await self._engine.recover(unit, Trigger(source="manual"))

    async def reset(self, unit: str) -> object:
        return await self._engine.reset(unit)

    def status(self, unit: str | None) -> object:
        return self._engine.status(unit)

    def history(self, unit: str) -> object:
        return self._engine.history(unit)
