"""The read side: budgets, give-ups, status and history, from the store and the ledger alone.

Nothing here talks to systemd or changes anything: every function reads the
history database (:class:`~handlers.store.Store`) and the restart ledger
(:class:`~handlers.ledger.Ledger`, the budget's second memory outside the state
filesystem) on the injected timeline of ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from handlers import ladder
from handlers.ladder import Level, State
from handlers.ledger import Entry, Ledger
from handlers.parking import ParkedUnit, describe
from handlers.store import IncidentRow, Stamp, Store, UnitSummary
from unitgen.policy import Policy


def timeline(at: Stamp, now: Stamp) -> float:
    """``at`` on the monotonic timeline of ``now`` (from the wall clock across a reboot)."""
    if at.boot == now.boot:
        return at.mono
    return now.mono - max(0.0, now.wall - at.wall)


def level_of(inc: IncidentRow) -> Level:
    return Level(min(max(inc.level, 1), 4))


def reset_at(store: Store, unit: str, now: Stamp, entry: Entry) -> float | None:
    """When ``unit`` was last re-armed (history or ledger, the later), or None."""
    times = [t for t in (store.reset_at(unit, now),) if t is not None]
    if entry.reset is not None:
        times.append(timeline(entry.reset, now))
    return max(times, default=None)


# The unit's ledger entry and when it was last re-armed: what both budget() and
# given_up() read, read once by a caller that asks both (the diagnosis, status).
Records = tuple[Entry, float | None]


def records(store: Store, ledger: Ledger, unit: str, now: Stamp) -> Records:
    entry = ledger.entry(unit)
    return entry, reset_at(store, unit, now, entry)


def budget(
    store: Store,
    ledger: Ledger,
    unit: str,
    policy: Policy,
    now: Stamp,
    known: Records | None = None,
) -> tuple[int, float | None]:
    """(restart attempts counted in the window, the last attempt's time or None)."""
    r = policy.recovery
    entry, reset = known or records(store, ledger, unit, now)
    # The union of both records; an attempt in both carries the same stamp.
    times = sorted(
        {
            *store.restart_times(unit, now, max(r.window, r.stable_after)),
            *(timeline(a, now) for a in entry.attempts),
        }
    )
    last = max(times) if times else None
    since = ladder.count_start(
        now.mono,
        window=r.window,
        stable_after=r.stable_after,
        last_attempt_at=last,
        reset_at=reset,
    )
    return ladder.attempts_in_window(times, since), last


def given_up(
    store: Store,
    ledger: Ledger,
    unit: str,
    now: Stamp,
    last: IncidentRow | None,
    known: Records | None = None,
) -> IncidentRow | None:
    """The give-up no reset re-armed: ``last`` (the unit's last incident), or the
    ledger's record of one when the history lost it."""
    entry, reset = known or records(store, ledger, unit, now)
    if (
        last is not None
        and last.state == "gave-up"
        and last.closed is not None
        and (reset is None or reset < timeline(last.closed, now))
    ):
        return last
    mark = entry.gave_up
    if mark is None or (reset is not None and reset >= timeline(mark.at, now)):
        return None
    return IncidentRow(
        mark.incident_id,
        unit,
        "ledger",
        "",
        "",
        "gave-up",
        mark.reason,
        int(Level.ALERT_AND_STOP),
        mark.at,
        mark.at,
    )


def history_gap(store: Store, ledger: Ledger, now: float) -> tuple[float, str] | None:
    """(since, why) when the history database is not being written, else None."""
    gap = ledger.gap()
    if gap is not None:
        return gap.since, gap.reason
    if not store.persistent:
        return now, store.note or "history not kept"
    return None


def state_of(inc: IncidentRow | None) -> tuple[State, str]:
    """The run state and reason a recorded incident stands for (joined and duplicate runs)."""
    if inc is None:
        return State.NOT_NEEDED, "no incident recorded"
    mapping = {
        "recovered": State.RECOVERED,
        "gave-up": State.GAVE_UP,
        "open": State.DIAGNOSING,
        "reset": State.NOT_NEEDED,
        "parked": State.PARKED,
    }
    return mapping.get(inc.state, State.DIAGNOSING), inc.reason or inc.state


def failure_reason(summary: UnitSummary) -> str:
    """What failed last, and, if the ladder gave up or parked, why it stopped."""
    what = summary.last_classification or "unknown"
    if summary.state == "parked" and summary.last_reason:
        return f"{what}; {summary.last_reason}"
    if summary.state == "gave-up" and summary.last_reason:
        return f"{what}; gave up: {summary.last_reason}"
    return what if summary.incidents else ""


def status(
    store: Store,
    ledger: Ledger,
    units: Iterable[str],
    now: Stamp,
    policy_for: Callable[[str, list[str]], Policy],
    parked_for: Callable[[str, Stamp], ParkedUnit | None] | None = None,
) -> list[dict[str, object]]:
    """One row a unit: its state, budget, last failure and the history's health."""
    gap = history_gap(store, ledger, now.wall)
    out: list[dict[str, object]] = []
    for name in units:
        notes: list[str] = []
        policy = policy_for(name, notes)
        summary = store.summary(name)
        known = records(store, ledger, name, now)
        used, _last = budget(store, ledger, name, policy, now, known)
        last = store.last_incident(name)
        gave_up = given_up(store, ledger, name, now, last, known) is not None
        parked = parked_for(name, now) if parked_for is not None else None
        state = "gave-up (run unitgen reset)" if gave_up else summary.state
        if parked is not None and not gave_up:
            state = "parked, waiting for " + describe(parked.waiting_for, policy.depends)
        out.append(
            {
                "unit": name,
                "state": state,
                "parked": _parked_json(parked, now, policy) if not gave_up else None,
                "attempts_in_window": used,
                "max_attempts": policy.recovery.max_attempts,
                "window": policy.recovery.window,
                "last_failure_reason": failure_reason(summary),
                "incidents": summary.incidents,
                "mttr": summary.mttr,
                "success_rate": summary.success_rate,
                "default_policy": policy.default,
                "history_degraded_since": gap[0] if gap else None,
                "history_degraded_reason": gap[1] if gap else "",
                "group": incident_group(store, last.id) if last is not None else "",
                "notes": notes + ([store.note] if store.note else []),
            }
        )
    return out


def _parked_json(parked: ParkedUnit | None, now: Stamp, policy: Policy) -> dict[str, object] | None:
    """A parked unit, for `unitgen status --json`: what it waits for and when it retries."""
    if parked is None:
        return None
    return {
        "waiting_for": list(parked.waiting_for),
        "waiting_for_text": describe(parked.waiting_for, policy.depends),
        "reason": parked.reason,
        "incident_id": parked.incident_id,
        "since": now.wall - (now.mono - parked.since),
        "parked_at": now.wall - (now.mono - parked.at),
        "next_retry": now.wall + max(0.0, parked.at + parked.interval - now.mono),
        "interval": parked.interval,
    }


def history(store: Store, unit: str, limit: int = 50) -> list[dict[str, object]]:
    """The unit's last ``limit`` incidents, each with its steps."""
    out: list[dict[str, object]] = []
    for inc in store.incidents(unit, limit):
        out.append(
            {
                "incident_id": inc.id,
                "source": inc.source,
                "classification": inc.classification,
                "state": inc.state,
                "reason": inc.reason,
                "level": level_of(inc).label,
                "opened": inc.opened.wall,
                "closed": inc.closed.wall if inc.closed else None,
                "group": incident_group(store, inc.id),
                "attempts": [
                    {
                        "time": a.at.wall,
                        "level": Level(min(max(a.level, 1), 4)).label,
                        "action": a.action,
                        "result": a.result,
                        "reason": a.reason,
                        "duration": round(a.duration, 6),
                    }
                    for a in store.attempts(inc.id)
                ],
            }
        )
    return out


def incident_group(store: Store, incident_id: str) -> str:
    """The incident group the incident was part of ("group ID: cause"), or ""."""
    for attempt in store.attempts(incident_id):
        if attempt.action == "group":
            return attempt.reason
    return ""
