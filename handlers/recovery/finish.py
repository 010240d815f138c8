"""The end of a run: what its terminal state means, decided once, from one table.

The ladder's loop (:mod:`.engine`) stops in a terminal state, with the
:class:`~handlers.ladder.GiveUp` reason the transition into ``GAVE_UP`` carried
(or a dry run stops before its restart). :data:`ENDINGS`, keyed by that pair,
says what happens to the incident and gives the outcome's reason text;
:meth:`Finish._finish` carries it out, releases what the run still holds and
builds the :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass

from handlers.events import EventKind
from handlers.ladder import GiveUp, Level, State
from handlers.recovery.core import Moment
from handlers.recovery.model import Outcome, Run
from handlers.recovery.parked import Parks

DRY_RUN_STOP = "dry run: would reset-failed and restart"


class Close(enum.Enum):
    """What a run's end does to its incident."""

    RECOVERED = "recovered"  # close it recovered, its last steps in the same transaction
    GAVE_UP = "gave-up"  # close it given up: ledger mark, GaveUp event, the last alert
    SEEN_LATER = "seen-later"  # no incident of ours; one left open by a dead run is over
    NOTHING = "nothing"  # left as it is (open for systemd's Restart=, or given up before)
    PARKED = "parked"  # left parked: retried later (handlers/recovery/parked.py)


@dataclass(frozen=True)
class Ending:
    close: Close
    reason: Callable[[Run], str]  # the outcome's (and a closed incident's) reason
    # Nothing happened: the events made on the way are dropped, not released.
    quiet: bool = False


def _recovered(run: Run) -> str:
    if run.resumed is not None and run.restarts == 0:
        return "active again: the restart made before its owner died is verified"
    return f"active again after {run.restarts} restart(s)"


def _plain(why: GiveUp) -> Callable[[Run], str]:
    return lambda run: why.value


def _with_detail(why: GiveUp) -> Callable[[Run], str]:
    """The give-up reason, and what the step that decided it found."""
    return lambda run: f"{why.value}: {run.detail}" if run.detail else why.value


def _dependency(run: Run) -> str:
    if run.waiting_on:
        return f"{GiveUp.DEPENDENCY.value}: {', '.join(run.waiting_on)} down"
    return GiveUp.DEPENDENCY.value


def _given_up_earlier(run: Run) -> str:
    earlier = run.incident.reason if run.incident is not None else ""
    return f"given up earlier ({earlier}); run `unitgen reset {run.unit}`"


# Key: (terminal state, the give-up reason of the edge into it). Every edge of
# handlers.ladder.TRANSITIONS into a terminal state has its row (tests/test_recovery.py).
ENDINGS: dict[tuple[State, GiveUp | None], Ending] = {
    (State.RECOVERED, None): Ending(Close.RECOVERED, _recovered),
    (State.NOT_NEEDED, None): Ending(Close.SEEN_LATER, lambda run: run.detail or "already active"),
    # Our start crashed and systemd's Restart= has it (or had it before we acted): an
    # incident stays open and the next OnFailure= (start-limit-hit) continues it.
    (State.WAITING_FOR_SYSTEMD, None): Ending(
        Close.NOTHING, lambda run: run.detail or "systemd is restarting it"
    ),
    (State.GAVE_UP, GiveUp.BUDGET): Ending(Close.GAVE_UP, _plain(GiveUp.BUDGET)),
    (State.GAVE_UP, GiveUp.NOT_FOUND): Ending(Close.GAVE_UP, _plain(GiveUp.NOT_FOUND)),
    (State.GAVE_UP, GiveUp.DISK): Ending(Close.GAVE_UP, _with_detail(GiveUp.DISK)),
    (State.GAVE_UP, GiveUp.CONFIG): Ending(Close.GAVE_UP, _with_detail(GiveUp.CONFIG)),
    (State.GAVE_UP, GiveUp.UNCOUNTED): Ending(Close.GAVE_UP, _with_detail(GiveUp.UNCOUNTED)),
    (State.GAVE_UP, GiveUp.DEPENDENCY): Ending(Close.GAVE_UP, _dependency),
    # The trigger is recorded (ignored-given-up), but consumers see no incident
    # activity after the GaveUp that ended it.
    (State.GAVE_UP, GiveUp.GIVEN_UP): Ending(Close.NOTHING, _given_up_earlier, quiet=True),
    # after_give_up = "park": the same reasons, left parked; Finish._finish puts what
    # it waits for in front ("parked, waiting for db.service; dependency: ...").
    (State.PARKED, GiveUp.BUDGET): Ending(Close.PARKED, _plain(GiveUp.BUDGET)),
    (State.PARKED, GiveUp.DISK): Ending(Close.PARKED, _with_detail(GiveUp.DISK)),
    (State.PARKED, GiveUp.CONFIG): Ending(Close.PARKED, _with_detail(GiveUp.CONFIG)),
    (State.PARKED, GiveUp.DEPENDENCY): Ending(Close.PARKED, _dependency),
    # A dry run stops where it would restart.
    (State.RESTARTING, None): Ending(Close.NOTHING, lambda run: DRY_RUN_STOP),
}


def ending_of(state: State, run: Run) -> tuple[State, Ending]:
    """The run's final state and what it means; decided here and nowhere else."""
    if state is State.NOT_NEEDED and run.incident is not None:
        # Active again on a re-diagnosis (a slow start outran start_timeout): recovered.
        state = State.RECOVERED
    return state, ENDINGS[(state, run.give_up)]


class Finish(Parks):
    """The terminal states' effects on the history, the ledger, the events and the alerts."""

    async def _finish(self, run: Run, state: State) -> Outcome:
        self._forget_expectation(run)
        await self._unpin(run)
        state, ending = ending_of(state, run)
        inc = run.incident
        run.reason = ending.reason(run)
        if ending.close is Close.PARKED:
            run.reason = self._parked_reason(run, run.reason)
        if ending.close not in (Close.RECOVERED, Close.PARKED) or inc is None:
            # A recovered incident's last rows go with its close, in one transaction.
            self._flush_rows(run)
        self._events_at(run, Moment.END, quiet=ending.quiet)
        if run.restarts == 0 and run.incident is not None:
            self._start_journal(run)
        now = self._stamp()
        journal: tuple[str, ...] = ()
        if run.journal_task is not None:
            try:
                journal = await asyncio.wait_for(run.journal_task, 5.0)
            except Exception as exc:
                journal = (f"(journal unavailable: {type(exc).__name__})",)
        if ending.close is Close.RECOVERED and inc is not None:
            rows, run.rows = run.rows, []
            # The last steps, the restart's result and the close: one transaction.
            self.store.close_incident(
                inc.id,
                state="recovered",
                reason=run.reason,
                at=run.active_at or now,
                rows=rows,
                last_restart=("ok", run.detail, run.call.took),
            )
            self._emit(
                run,
                EventKind.RECOVERED,
                attempts=run.used,
                duration=round(now.wall - inc.opened.wall, 6),
            )
            await self.alerting.resolve_reset(run.unit, run.policy)
            if self.watch_uptime:
                await self.alerting.resolve(run.unit, run.policy, inc)
            else:
                self.alerting.resolve_later(run, inc)
        elif ending.close is Close.GAVE_UP and inc is not None:
            self.ledger.give_up(run.unit, inc.id, run.reason, now)
            self.store.update_incident(inc.id, level=int(Level.ALERT_AND_STOP))
            self.store.close_incident(inc.id, state="gave-up", reason=run.reason, at=now)
            self._emit(run, EventKind.GAVE_UP, reason=run.reason, attempts=run.used)
            run.level = Level.ALERT_AND_STOP
            self.alerting.alert(
                run,
                "firing",
                Level.ALERT_AND_STOP,
                f"{run.unit} left failed: {run.reason} ({run.used} restart attempt(s) in "
                f"{run.policy.recovery.window:g}s); run `unitgen reset {run.unit}` when fixed",
            )
        elif ending.close is Close.PARKED and inc is not None:
            self._close_parked(run, inc, now)
        elif ending.close is Close.SEEN_LATER:
            last = self.store.last_incident(run.unit)
            if last is not None and last.state == "parked":
                run.unparked = True  # started by someone else while parked: it is over
            if last is not None and last.state in ("open", "parked"):
                # An incident left open (its process was killed after the restart, or
                # systemd's Restart= finished the job): the unit is up, so it is over.
                self.store.close_incident(
                    last.id, state="recovered", reason="active again (seen later)", at=now
                )
                run.incident = last
                self._emit(run, EventKind.RECOVERED, attempts=run.used)
                closed = self.store.incident(last.id) or last
                if self.watch_uptime:
                    await self.alerting.resolve(run.unit, run.policy, closed)
                else:
                    self.alerting.resolve_later(run, closed)
            await self.alerting.resolve_reset(run.unit, run.policy)
        self._history_gap(run)
        self.alerting.flush()
        self._parking_ended(run, state)
        outcome = self._outcome(run, state, run.reason or run.detail, journal)
        if run.parked is not None:
            return dataclasses.replace(outcome, waiting_for=run.parked.waiting_for)
        return outcome
