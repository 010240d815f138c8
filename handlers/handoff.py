"""The OnFailure= path handing its failure to the running listener daemon.

``unitgen recover`` (run by ``unitgen-recover@.service``) first asks the bus
whether ``org.unitgen.Recovery1`` has an owner. If it does, the daemon's
listener has normally taken the failure over already: systemd starts the
OnFailure= unit at the same moment it broadcasts the give-up, and the listener
acts on that signal within milliseconds, long before a Python process is up.
So the oneshot first looks in the shared history for the incident that handled
the failed invocation (``$MONITOR_INVOCATION_ID``), read-only, and reports it
when that incident is closed. Otherwise it calls ``Recover(unit)`` and waits
for the outcome: the daemon joins its own ladder still running for the unit,
or runs one. If no daemon owns the name, or it vanishes mid-call (killed,
restarting), the caller runs the ladder itself. Either way the per-unit flock
and the shared SQLite history make a double restart impossible: the hand-off
is an optimisation, never the safety mechanism.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from handlers.bus import DBUS_NAME, DBUS_PATH, SystemdBus, unwrap
from handlers.busnames import BUS_NAME, INTERFACE, OBJECT_PATH
from handlers.store import Store
from unitgen.errors import AccessDeniedError, StateError, SystemdError

log = logging.getLogger(__name__)


# The daemon's ladder may wait out backoff and dependency rounds; the recovery
# unit's own TimeoutStartSec bounds the whole run anyway.
HANDOFF_TIMEOUT = 900.0

# Replies that mean "no daemon to hand to": run the ladder here instead.
_NO_DAEMON = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    # Past the daemon's call limits: the ladder here, under the same per-unit lock.
    "org.freedesktop.DBus.Error.LimitsExceeded",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "bus connection failed",
)


async def daemon_running(bus: SystemdBus) -> bool:
    (owned,) = await bus.call(
        "NameHasOwner",
        "s",
        [BUS_NAME],
        interface=DBUS_NAME,
        path=DBUS_PATH,
        destination=DBUS_NAME,
    )
    return bool(owned)


def handled_incident(database: Path, unit: str, invocation_id: str) -> dict[str, Any] | None:
    """The closed incident that handled ``unit``'s invocation, as a Recover() reply; else None.

    Read-only and without the store's set-up (no schema, no migration, no write):
    a missing or locked database, or an incident still open, is None and the
    caller asks the daemon.
    """
    if not invocation_id:
        return None
    store = Store.reader(database)
    if store is None:
        return None
    try:
        incident_id = store.handled_invocation(unit, invocation_id)
        inc = store.incident(incident_id) if incident_id is not None else None
        if inc is None or inc.state == "open" or inc.closed is None:
            return None
        restarts = sum(1 for a in store.attempts(inc.id) if a.action == "restart")
    except StateError as exc:
        log.debug("history not readable for the hand-off: %s", exc)
        return None
    finally:
        store.close()
    return {
        "unit": unit,
        "state": inc.state,
        "reason": inc.reason,
        "attempts": restarts,
        "incident_id": inc.id,
        "level": inc.level,
        "classification": inc.classification,
        "restarts": 0,
        "joined": True,
        "duration": inc.closed.mono - inc.opened.mono,
        "notes": [f"incident opened by the {inc.source} when systemd gave up; not opened again"],
    }


async def hand_off(
    bus: SystemdBus,
    unit: str,
    timeout: float = HANDOFF_TIMEOUT,  # noqa: ASYNC109
    *,
    database: Path | None = None,
    invocation_id: str = "",
) -> dict[str, Any] | None:
    """The daemon's outcome for ``unit``, or None when there is no daemon to ask.

    With ``database`` and the failed ``invocation_id``, an incident the daemon
    already closed for that invocation is the outcome, without a call.
    AccessDenied (the daemon does not trust this caller) is raised: falling
    back would hide a misconfigured bus policy.
    """
    if not await daemon_running(bus):
        return None
    if database is not None:
        record = handled_incident(database, unit, invocation_id)
        if record is not None:
            return record
    try:
        (outcome,) = await bus.call(
            "Recover",
            "s",
            [unit],
            interface=INTERFACE,
            path=OBJECT_PATH,
            destination=BUS_NAME,
            what=unit,
            timeout=timeout,
        )
    except SystemdError as exc:
        text = str(exc)
        if "AccessDenied" in text:
            raise AccessDeniedError(f"Recover({unit}): the unitgen daemon refused: {text}") from exc
        if any(marker in text for marker in _NO_DAEMON):
            log.info("daemon went away during the hand-off of %s; running the ladder here", unit)
            return None
        raise
    result = unwrap(outcome)
    return result if isinstance(result, dict) else {}


def outcome_from_record(record: dict[str, Any], unit: str) -> Any:
    """The daemon's a{sv} reply as a :class:`handlers.recovery.Outcome` for printing."""
    from handlers.ladder import Level, State
    from handlers.recovery import Outcome

    def text(key: str) -> str:
        value = record.get(key, "")
        return value if isinstance(value, str) else str(value)

    def number(key: str) -> int:
        value = record.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    try:
        state = State(text("state"))
    except ValueError:
        state = State.DIAGNOSING
    try:
        level = Level(number("level") or 1)
    except ValueError:
        level = Level.RESTART
    notes = record.get("notes", ())
    if not isinstance(notes, list | tuple):  # a daemon that breaks the "as" contract
        notes = ()
    duration = record.get("duration", 0.0)
    return Outcome(
        unit=text("unit") or unit,
        state=state,
        reason=text("reason"),
        attempts=number("attempts"),
        incident_id=text("incident_id"),
        level=level,
        classification=text("classification"),
        restarts=number("restarts"),
        joined=bool(record.get("joined", False)),
        duration=float(duration) if isinstance(duration, int | float) else 0.0,
        notes=(
            "handled by the running unitgen watch daemon",
            *(n for n in notes if isinstance(n, str)),
        ),
    )
