"""The end of a run: close the incident, send the alerts, and say how it ended.

The ladder's loop (:mod:`.engine`) reaches a terminal state; :meth:`Finish._finish`
writes what that state means for the incident (recovered, gave up, left to
systemd), releases what the run still holds, and builds the :class:`Outcome`.
"""

from __future__ import annotations

import asyncio

from handlers.events import EventKind
from handlers.ladder import GiveUp, Level, State
from handlers.recovery.core import Core
from handlers.recovery.model import Outcome, Run


class Finish(Core):
    """The terminal states' effects on the history, the ledger, the events and the alerts."""

    async def _finish(self, run: Run, state: State) -> Outcome:
        self._forget_expectation(run)
        await self._unpin(run)
        inc = run.incident
        if state is State.NOT_NEEDED and inc is not None:
            # Active again on a re-diagnosis (a slow start outran start_timeout): recovered.
            state = State.RECOVERED
        closing_recovered = state is State.RECOVERED and inc is not None
        if not closing_recovered:
            # A recovered incident's last rows go with its close, in one transaction.
            self._flush_rows(run)
        if state is State.GAVE_UP and run.reason == GiveUp.GIVEN_UP.value and run.held:
            # Nothing happened: the trigger is recorded (ignored-given-up), but consumers
            # see no incident activity after the GaveUp that ended it.
            run.held.clear()
        self._release_events(run)
        if run.restarts == 0 and run.incident is not None:
            self._start_journal(run)
        now = self._stamp()
        journal: tuple[str, ...] = ()
        if run.journal_task is not None:
            try:
                journal = await asyncio.wait_for(run.journal_task, 5.0)
            except Exception as exc:
                journal = (f"(journal unavailable: {type(exc).__name__})",)
        if closing_recovered and inc is not None:
            run.reason = f"active again after {run.restarts} restart(s)"
            if run.resumed is not None and run.restarts == 0:
                run.reason = "active again: the restart made before its owner died is verified"
            rows, run.rows = run.rows, []
            # The last steps, the restart's result and the close: one transaction.
            self.store.close_incident(
                inc.id,
                state="recovered",
                reason=run.reason,
                at=run.active_at or now,
                rows=rows,
                last_restart=("ok", run.detail, run.restart_took),
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
        elif state is State.GAVE_UP and inc is not None and run.reason != GiveUp.GIVEN_UP.value:
            if run.reason == GiveUp.DEPENDENCY.value and run.waiting_on:
                run.reason = f"dependency: {', '.join(run.waiting_on)} down"
            elif (
                run.reason in (GiveUp.DISK.value, GiveUp.CONFIG.value, GiveUp.UNCOUNTED.value)
                and run.detail
            ):
                run.reason = f"{run.reason}: {run.detail}"
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
        elif state is State.GAVE_UP and inc is not None:
            run.reason = f"given up earlier ({inc.reason}); run `unitgen reset {run.unit}`"
        elif state is State.NOT_NEEDED:
            run.reason = run.detail or "already active"
            last = self.store.last_incident(run.unit)
            if last is not None and last.state == "open":
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
        elif state is State.WAITING_FOR_SYSTEMD:
            run.reason = run.detail or "systemd is restarting it"
            if inc is not None and run.restarts > 0:
                # Our start crashed and systemd's Restart= has it: the incident stays open
                # and the next OnFailure= (start-limit-hit) continues it.
                pass
        elif run.reason == "" and self.dry_run:
            run.reason = "dry run"
        self._history_gap(run)
        self.alerting.flush()
        return self._outcome(run, state, run.reason or run.detail, journal)
