"""``unitgen test-restart UNIT``: the fire drill. Kill the main PID; time the way back.

Sends SIGKILL to the unit's main process through systemd (KillUnit, so it works
in any PID namespace), then waits, driven by PropertiesChanged, until the unit
is active again with a different main PID, and reports how long that took,
how many restarts systemd did itself, and what the ladder recorded meanwhile.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "fire drill: kill a unit, time its recovery"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.recover import add_scope_argument

    parser.add_argument("unit", help="an active unit to kill")
    add_scope_argument(parser)
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="give up waiting after S s"
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from handlers.locks import check_unit_name
    from unitgen.commands.recover import setup_logging
    from unitgen.errors import UsageError

    check_unit_name(args.unit)
    if not 0 < args.timeout <= 3600:
        raise UsageError(f"--timeout {args.timeout}: expected seconds in (0, 3600]")
    setup_logging()
    report = asyncio.run(_drill(args))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        if report["ok"]:
            print(
                f"{args.unit}: active again after {report['seconds']:.3f}s "
                f"(main PID {report['old_pid']} -> {report['new_pid']}; "
                f"systemd restarts {report['systemd_restarts']}, "
                f"ladder restarts {report['ladder_restarts']})"
            )
        else:
            print(f"{args.unit}: NOT active again within {args.timeout:g}s: {report['detail']}")
    return 0 if report["ok"] else 1


async def _drill(args: argparse.Namespace) -> dict[str, Any]:
    import time

    from handlers.bus import SystemdBus
    from handlers.store import Store
    from unitgen.commands.recover import scope_paths
    from unitgen.errors import SystemdError, UnitNotFoundError, UsageError

    paths = scope_paths(args)
    bus = await SystemdBus.connect(paths.scope)
    try:
        props = await bus.require_unit(args.unit)
        old_pid = int(props.get("MainPID") or 0)
        if props.get("ActiveState") != "active" or old_pid == 0:
            raise UsageError(f"{args.unit}: not active with a main process; nothing to kill")
        before = int(props.get("NRestarts") or 0)
        wall0 = time.time()
        t0 = time.monotonic()
        await bus.kill(args.unit, "main", 9)

        def back(p: dict[str, Any]) -> bool:
            pid = int(p.get("MainPID") or 0)
            return p.get("ActiveState") == "active" and pid not in (0, old_pid)

        ok, detail, new_pid, after = True, "", 0, before
        try:
            final = await bus.wait_for(args.unit, back, args.timeout)
            new_pid = int(final.get("MainPID") or 0)
            after = int(final.get("NRestarts") or 0)
        except UnitNotFoundError:
            raise
        except SystemdError as exc:
            ok, detail = False, str(exc)
        seconds = time.monotonic() - t0
    finally:
        await bus.close()
    store = Store.open(paths.database)
    try:
        rows = store._query(
            "SELECT count(*) FROM attempts WHERE unit = ? AND action = 'restart' AND wall >= ?",
            (args.unit, wall0),
        )
    finally:
        store.close()
    return {
        "unit": args.unit,
        "ok": ok,
        "seconds": round(seconds, 6),
        "old_pid": old_pid,
        "new_pid": new_pid,
        "systemd_restarts": max(0, after - before),
        "ladder_restarts": int(rows[0][0]) if rows else 0,
        "detail": detail,
    }
