"""What of an :class:`~handlers.events.Event` may leave the process.

Every publisher (D-Bus signals, the journal, Prometheus labels) goes through
:func:`public_details`, so there is one place that decides what the outside
world sees. The rule is an allow-list: a detail key that is not listed in
:data:`DETAIL_TYPES` is dropped, a value is coerced to the key's documented
type or dropped, and a string is cut to :data:`MAX_TEXT` characters and
withheld entirely when it looks like it carries a URL or a credential. The
ladder never puts alert URLs or passwords into an event; this is the second
line, so a careless ``fields={"url": ...}`` in some future step still cannot
reach a bus monitor or a forwarded journal.

The key list is the documented contract of the ``details`` argument of every
signal (docs/events.md); adding a key is a compatible change, changing a
key's type is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from handlers.events import Event, FieldValue

__all__ = [
    "DETAIL_TYPES",
    "MAX_TEXT",
    "REDACTED",
    "looks_secret",
    "public_details",
    "public_text",
]

# key -> the one Python type its value always has once published.
DETAIL_TYPES: Mapping[str, type] = {
    # where the ladder is
    # restart | restart-with-dependencies | cleanup-then-restart | alert-and-stop
    "level": str,
    "from": str,  # Escalated: the level that was used up
    "to": str,  # Escalated: the level entered
    # the ladder state the step ran: diagnosing | checking-dependencies | cleaning-up |
    # checking-resources | validating-config | backing-off | restarting | verifying | ...
    "step": str,
    "state": str,  # the ladder state an incident ended in, or a unit's recovery state
    "verdict": str,  # what the step found (ladder Verdict value)
    "action": str,  # what the step did, e.g. "RestartUnit"
    "result": str,  # ok | failed | skipped | timeout | busy | waiting
    # why the incident opened (exit-code | signal | core-dump | timeout | oom-kill |
    # start-limit-hit | watchdog | resources | dependency | health) or why the ladder gave
    # up (budget | disk | config | dependency | given-up | not-found)
    "reason": str,
    # IncidentOpened: how the failure was classified (exit-code | signal | core-dump |
    # timeout | oom-kill | start-limit-hit | watchdog | resources | dependency | health)
    "classification": str,
    "source": str,  # who triggered the ladder: onfailure | listener | manual | health | ...
    "trigger": str,
    "attempt": int,
    "attempts": int,
    "max_attempts": int,
    "duration": float,  # seconds
    "delay": float,  # seconds of backoff before the next attempt
    # what systemd said
    "active_state": str,
    "sub_state": str,
    "unit_result": str,  # systemd's Result property
    "n_restarts": int,
    "exit_code": str,  # ExecMainCode as text: exited | killed | dumped
    "exit_status": int,
    "invocation_id": str,
    # Crashed: who restarts the unit (systemd | ladder | none)
    "restarted_by": str,
    "dependency": str,  # the unit name of the dependency that is down
    # health
    "healthy": bool,
    "probe": str,  # http | tcp | command
    "failures": int,  # consecutive probe failures
    # outcome
    "alerted": bool,
    "dry_run": bool,
    "detail": str,  # one line about the step or probe; cut and screened here
    "error": str,  # one line, already free of secrets; cut and screened again here
    "message": str,
    # incident groups (GroupOpened, GroupClosed)
    "cause": str,  # what the members share, e.g. "dependency db.service", "disk /var"
    "cause_kind": str,  # dependency | depends | disk | memory | config | exit-status
    "members": str,  # the units, space-separated (cut like any text: see member_count)
    "member_count": int,
    "recovered": int,  # GroupClosed: members recovered
    "gave_up": int,  # GroupClosed: members the ladder gave up on
    "waiting": int,  # GroupClosed: members left waiting for a cause that gave up
}

MAX_TEXT = 200
REDACTED = "[withheld]"

# A URL (webhook URLs are credentials), userinfo, or key=value credential text.
_SECRETISH = re.compile(
    r"://|\b(?:password|passwd|pwd|token|secret|api[_-]?key|authorization)\b\s*[:=]|\bbearer\s+\S",
    re.IGNORECASE,
)


# The same few values (levels, steps, results, "attempt 1 of 3") come back in every
# event; screening one costs a regex search over it. Bounded: cleared when full.
_SCREENED: dict[str, str] = {}
_SCREENED_MAX = 4096


def public_text(value: str) -> str:
    """``value`` as it may be shown: one line, bounded, nothing that looks like a secret."""
    shown = _SCREENED.get(value)
    if shown is not None:
        return shown
    if looks_secret(value):
        shown = REDACTED
    else:
        line = " ".join(value.split())
        shown = line if len(line) <= MAX_TEXT else line[: MAX_TEXT - 1] + "…"
    if len(value) <= 2 * MAX_TEXT:
        if len(_SCREENED) >= _SCREENED_MAX:
            _SCREENED.clear()
        _SCREENED[value] = shown
    return shown


def _coerce(kind: type, value: FieldValue) -> FieldValue | None:
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        # bool is an int in Python; True as an attempt count is a bug upstream.
        return None
    if kind is int:
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    if kind is float:
        if isinstance(value, int | float):
            number = float(value)
            return number if math.isfinite(number) else None
        return None
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, int | float):
        return str(value)
    return None


# FanOut hands the same Event object to every sink in turn: remember the last answer.
_last: tuple[Event, dict[str, FieldValue]] | None = None


def public_details(event: Event) -> dict[str, FieldValue]:
    """The event's details that may be published, each with its documented type.

    Callers must not modify the returned dict (it is shared between sinks).
    """
    global _last
    last = _last
    if last is not None and last[0] is event:
        return last[1]
    out = _compute(event)
    _last = (event, out)
    return out


def _compute(event: Event) -> dict[str, FieldValue]:
    out: dict[str, FieldValue] = {}
    for key, value in event.fields.items():
        kind = DETAIL_TYPES.get(key)
        if kind is None:
            continue
        coerced = _coerce(kind, value)
        if coerced is not None:
            out[key] = coerced
    return out


def looks_secret(value: str) -> bool:
    """True when ``value`` contains a URL or ``password=``-style text."""
    return _SECRETISH.search(value) is not None
