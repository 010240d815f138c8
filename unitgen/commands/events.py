"""``unitgen events``: the reference consumer of the org.unitgen.Recovery1 signals.

It adds one match rule for the daemon's signals and prints a line per signal,
nothing else: what it shows is exactly what ``busctl monitor
org.unitgen.Recovery1`` or ``dbus-monitor`` show. The match names the
well-known name as sender, so the stream continues when the daemon restarts
(the bus daemon resolves the name to whoever owns it now).

Text lines: ``TIME EVENT UNIT [incident=ID] key=value ...``. With ``--json``
one object per line: ``{"event", "unit", "incident_id", "timestamp",
"details"}`` (timestamp in seconds since the epoch, as a float).
"""

from __future__ import annotations

import argparse

HELP = "follow the recovery event stream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user", action="store_true", help="the session bus (default: system bus as root)"
    )
    parser.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="GLOB",
        help="only events of units matching GLOB (repeatable)",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N events")
    parser.add_argument("--address", default=None, help="bus address (default: the scope's bus)")
    parser.add_argument(
        "--dbus",
        choices=("next", "fast"),
        default=None,
        help="D-Bus library (default: $UNITGEN_DBUS, else dbus-fast if installed)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from unitgen.errors import UsageError

    if args.count is not None and args.count < 1:
        raise UsageError(f"--count: expected a positive number, got {args.count}")
    return asyncio.run(_follow(args))


def format_event(
    member: str,
    unit: str,
    incident: str,
    timestamp_usec: int,
    details: dict[str, object],
    as_json: bool,
) -> str:
    """One output line for one signal (the body already unwrapped to plain values)."""
    import datetime
    import json

    seconds = timestamp_usec / 1_000_000
    if as_json:
        return json.dumps(
            {
                "event": member,
                "unit": unit,
                "incident_id": incident,
                "timestamp": seconds,
                "details": details,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")
    parts = [when, member, unit]
    if incident:
        parts.append(f"incident={incident}")
    for key in sorted(details):
        value = details[key]
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
    # One event, one line, whatever a hostile unit name contains.
    return " ".join(parts).replace("\n", "\\n").replace("\r", "\\r")


async def _follow(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import fnmatch
    import sys

    from handlers.bus import choose_library, load_library, match_rule, unwrap
    from handlers.dbus_api import BUS_NAME, INTERFACE, OBJECT_PATH, SIGNAL_SIGNATURE
    from unitgen.errors import SystemdError
    from unitgen.paths import Scope, detect_scope

    lib = load_library(args.dbus) if args.dbus else choose_library()
    scope = detect_scope(True if args.user else None)
    bus_type = lib.BusType.SESSION if scope is Scope.USER else lib.BusType.SYSTEM
    where = args.address or ("session bus" if scope is Scope.USER else "system bus")
    try:
        bus = await asyncio.wait_for(
            lib.MessageBus(bus_address=args.address, bus_type=bus_type).connect(), 25
        )
    except Exception as exc:
        raise SystemdError(f"cannot connect to the {where} ({type(exc).__name__})") from exc

    lines: asyncio.Queue[str] = asyncio.Queue()

    def on_message(msg: object) -> None:
        m: object = msg
        if (
            getattr(m, "message_type", None) != lib.MessageType.SIGNAL
            or getattr(m, "interface", None) != INTERFACE
            or getattr(m, "path", None) != OBJECT_PATH
            or getattr(m, "signature", None) != SIGNAL_SIGNATURE
        ):
            return
        try:
            unit, incident, ts, variants = getattr(m, "body", [])
            details = unwrap(dict(variants))
            if args.unit and not any(fnmatch.fnmatchcase(unit, g) for g in args.unit):
                return
            member = str(getattr(m, "member", ""))
            line = format_event(member, unit, incident, ts, details, args.json)
        except Exception as exc:
            # Say so rather than lose an event silently inside the library's dispatch.
            print(f"unitgen events: skipped a signal ({type(exc).__name__})", file=sys.stderr)
            return
        lines.put_nowait(line)

    async def dbus_call(member: str, body: list[str]) -> list[object]:
        reply = await bus.call(
            lib.Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature="s",
                body=body,
            )
        )
        if reply is None or reply.message_type == lib.MessageType.ERROR:
            text = reply.body[0] if reply is not None and reply.body else "no reply"
            raise SystemdError(f"{member} on the {where}: {text}")
        return list(reply.body)

    gone = asyncio.ensure_future(bus.wait_for_disconnect())
    try:
        bus.add_message_handler(on_message)
        rule = match_rule(type="signal", sender=BUS_NAME, interface=INTERFACE, path=OBJECT_PATH)
        await dbus_call("AddMatch", [rule])
        (running,) = await dbus_call("NameHasOwner", [BUS_NAME])
        state = "running" if running else "not running yet; waiting for it"
        # Goes to stderr so that stdout stays the event stream; also marks "subscribed".
        print(f"unitgen events: following {BUS_NAME} on the {where} ({state})", file=sys.stderr)
        sys.stderr.flush()
        seen = 0
        while args.count is None or seen < args.count:
            getter = asyncio.ensure_future(lines.get())
            done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                raise SystemdError(f"the {where} connection was lost")
            try:
                print(getter.result(), flush=True)
            except BrokenPipeError:
                return 0  # `unitgen events | head`: the reader has what it wanted
            seen += 1
    finally:
        bus.disconnect()
        # Not wait_for(): cancelling a waiter would cancel the bus's own disconnect future.
        await asyncio.wait({gone}, timeout=2)
        if gone.done():
            with contextlib.suppress(BaseException):
                gone.result()
        else:
            gone.cancel()
        for attr in ("_sock", "_stream"):
            obj = getattr(bus, attr, None)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
    return 0
