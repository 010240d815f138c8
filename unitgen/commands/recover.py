"""``unitgen recover UNIT``: run the recovery ladder once, as the OnFailure= unit does.

This is on the hot path of a failed service, so the module top imports only
argparse; everything else is imported inside :func:`run`, and the engine
imports its heavier steps (cleanup, alerts, probes) only when a step needs
them. ``python -X importtime -m unitgen recover ...`` shows what is left
(docs/recovery.md, "Start-up").

The shared set-up for reset/status/history/test-restart lives here too.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from handlers.bus import Expectation, UnitInfo
    from handlers.recovery import Outcome, RecoveryEngine
    from unitgen.paths import Paths

HELP = "run the recovery ladder for a failed unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "unit", nargs="?", help="the failed unit (default: $MONITOR_UNIT, set by OnFailure=)"
    )
    add_scope_argument(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="show what the ladder would do; change nothing"
    )


def add_scope_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", action="store_true", help="the user manager (default: system)")


def scope_paths(args: argparse.Namespace) -> Paths:
    from unitgen.paths import detect_scope, paths_for

    return paths_for(detect_scope(True if args.user else None))


class LogSink:
    """The OnFailure= path has no daemon: events go to stderr, which is the journal."""

    def emit(self, event: Any) -> None:
        import logging

        fields = " ".join(f"{k}={v}" for k, v in event.fields.items())
        logging.getLogger("unitgen.events").info(
            "%s %s incident=%s %s", event.kind.value, event.unit, event.incident_id or "-", fields
        )


class NoBus:
    """For commands that only read the history: any systemd call is a bug."""

    selects_interfaces = False

    async def unit_properties(self, name: str) -> dict[str, Any]:
        raise AssertionError(_NO_SYSTEMD)

    async def get_property(
        self, name: str, prop: str, interface: str = "org.freedesktop.systemd1.Unit"
    ) -> Any:
        raise AssertionError(_NO_SYSTEMD)

    async def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]:
        raise AssertionError(_NO_SYSTEMD)

    async def reset_failed(self, name: str) -> None:
        raise AssertionError(_NO_SYSTEMD)

    async def restart(self, name: str, mode: str = "replace") -> str:
        raise AssertionError(_NO_SYSTEMD)

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]:
        raise AssertionError(_NO_SYSTEMD)

    async def unpin(self, name: str) -> None:
        raise AssertionError(_NO_SYSTEMD)

    def expect_changes(self, name: str) -> Expectation | None:
        raise AssertionError(_NO_SYSTEMD)

    def forget(self, expectation: Expectation) -> None:
        raise AssertionError(_NO_SYSTEMD)

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109
        interfaces: Iterable[str] = (),
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        raise AssertionError(_NO_SYSTEMD)


_NO_SYSTEMD = "this command does not talk to systemd"


def offline_engine(args: argparse.Namespace) -> RecoveryEngine:
    from handlers.recovery import RecoveryEngine

    return RecoveryEngine(NoBus(), scope_paths(args), read_journal_lines=False)


def setup_logging(verbose: bool = False) -> None:
    import logging
    import sys

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="unitgen: %(message)s",
    )


def print_outcome(outcome: Outcome, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(outcome.to_dict(), sort_keys=True))
        return
    flag = " (dry run)" if outcome.dry_run else ""
    how = " (joined the recovery already running)" if outcome.joined else ""
    how = " (dropped: another recovery is running)" if outcome.dropped else how
    print(f"{outcome.unit}: {outcome.state.value}{flag}{how}: {outcome.reason}")
    print(
        f"  level {outcome.level.label}, {outcome.attempts} attempt(s) in the window, "
        f"{outcome.restarts} restart(s) now, classified {outcome.classification or '-'}, "
        f"incident {outcome.incident_id or '-'}, {outcome.duration:.3f}s"
    )
    if outcome.default_policy:
        print(f"  note: {outcome.unit} has no recovery policy; the default policy was used")
    for note in outcome.notes:
        if "no recovery policy" not in note:
            print(f"  note: {note}")
    for line in outcome.journal[-5:]:
        print(f"  journal: {line}")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from handlers.locks import check_unit_name
    from unitgen.errors import UsageError

    unit = args.unit or os.environ.get("MONITOR_UNIT", "")
    if not unit:
        raise UsageError("recover: name the unit (or run from OnFailure=, which sets MONITOR_UNIT)")
    check_unit_name(unit)
    setup_logging(verbose=bool(os.environ.get("MONITOR_UNIT")))
    outcome = asyncio.run(_recover(args, unit))
    print_outcome(outcome, args.json)
    from handlers.ladder import State

    # Parked is not recovered either: it is retried later, by the listener.
    return 1 if outcome.state in (State.GAVE_UP, State.PARKED) else 0


async def _recover(args: argparse.Namespace, unit: str) -> Outcome:
    import os

    from handlers.bus import SystemdBus
    from handlers.busretry import RetryingBus
    from handlers.recovery import RecoveryEngine, Trigger

    paths = scope_paths(args)
    source = "onfailure" if os.environ.get("MONITOR_UNIT") else "manual"
    trigger = Trigger.from_environment(os.environ, source=source)  # type: ignore[arg-type]
    bus = await SystemdBus.connect(paths.scope)
    try:
        if source == "onfailure" and not args.dry_run:
            # A running `unitgen watch` takes the work over D-Bus (handlers/handoff.py);
            # without one, or if it vanishes mid-call, the ladder runs here.
            from handlers.handoff import hand_off, outcome_from_record

            handed = await hand_off(
                bus, unit, database=paths.database, invocation_id=trigger.invocation_id
            )
            if handed is not None:
                return outcome_from_record(handed, unit)  # type: ignore[no-any-return]
        # A bus restart (which may also be why the hand-off failed) must not leave the
        # ladder calling a dead connection: it reconnects and carries on.
        handle = RetryingBus(bus, reconnect=lambda: SystemdBus.connect(paths.scope))
        engine = RecoveryEngine(
            handle, paths, events=LogSink(), dry_run=args.dry_run, watch_uptime=True
        )
        try:
            return await engine.recover(unit, trigger)
        finally:
            # Alerts are in flight as tasks: let them finish (bounded) before we exit.
            await engine.aclose()
            bus = handle.bus  # the connection to close is the last one
    finally:
        await bus.close()
