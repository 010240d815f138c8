"""The engine's side of parking (handlers/parking.py): choosing to park, recording
it, reading it back, and the checks and reminders of a parked unit.

A run parks instead of giving up when the unit's ``recovery.after_give_up``
resolves to "park" and the give-up reason has a way back
(:func:`handlers.ladder.park_instead`). The incident is left in state
``parked`` (the history) and the unit's ledger file gets a park mark (what it
waits for, since when), so a restarted listener resumes it on the same
schedule. No give-up mark is written: a later trigger runs the ladder again,
with the budget the window gives, and parks again if the cause is still there.
The next run for the unit continues the same incident, so its MTTR covers the
whole outage and its history shows every parking and resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from handlers import ladder, parking, resources
from handlers.events import EventKind
from handlers.ladder import GiveUp, Level, State, Transition
from handlers.ledger import ParkMark
from handlers.parking import ParkedUnit
from handlers.recovery.core import Core
from handlers.recovery.history import level_of, reset_at, timeline
from handlers.recovery.model import Run
from handlers.store import IncidentRow, Stamp

ParkingHook = Callable[[str, ParkedUnit | None], None]


class Parks(Core):
    """Parking in the engine; :class:`handlers.recovery.RecoveryEngine` mixes it in."""

    # Told at the end of every run: the unit's ParkedUnit when it parked, else None.
    # The listener's handlers.parking.Parking sets it; nothing else needs it.
    on_parking: ParkingHook | None = None

    def _park_mode(self, run: Run, give_up: GiveUp | None) -> str:
        # A unit whose dependency (a systemd unit or a depends probe) stayed down
        # through the bounded wait has one, whatever its spec says: that is the
        # dependent a dead database would otherwise strand.
        return ladder.after_give_up_mode(
            run.policy.recovery.after_give_up,
            has_dependency=bool(run.policy.depends) or give_up is GiveUp.DEPENDENCY,
            has_probe=run.policy.health is not None,
        )

    def _park_instead(self, run: Run, t: Transition) -> Transition:
        """The loop's edge, with GAVE_UP turned into PARKED where the unit parks."""
        if t.target is not State.GAVE_UP or t.give_up not in ladder.PARKABLE:
            return t
        return ladder.park_instead(t, self._park_mode(run, t.give_up))

    def _park_waits(self, run: Run) -> tuple[str, ...]:
        if run.give_up is None:
            return ()
        return parking.waits_for(
            run.give_up, run.waiting_on, has_health=run.policy.health is not None
        )

    def _parked_reason(self, run: Run, base: str) -> str:
        what = parking.describe(self._park_waits(run), run.policy.depends)
        return f"parked, waiting for {what}; {base}"

    def _close_parked(self, run: Run, inc: IncidentRow, now: Stamp) -> None:
        """Leave the incident parked: history, ledger mark, event, the one alert."""
        waits = self._park_waits(run)
        previous = self.ledger.entry(run.unit).parked
        if previous is not None and previous.incident_id == inc.id:
            since = previous.since
        else:
            firsts = [a.at for a in self.store.attempts(inc.id) if a.action == "park"]
            since = firsts[0] if firsts else now
        self._record_step(run, "park", "parked", run.reason, 0.0, at=now)
        rows, run.rows = run.rows, []
        self.store.close_incident(inc.id, state="parked", reason=run.reason, at=now, rows=rows)
        if not self.dry_run:
            self.ledger.park(run.unit, ParkMark(inc.id, waits, run.reason, since, now))
        interval = run.policy.recovery.park_interval
        run.parked = ParkedUnit(
            run.unit,
            inc.id,
            waits,
            run.reason,
            timeline(since, now),
            now.mono,
            interval,
        )
        self._emit(
            run,
            EventKind.STEP_FINISHED,
            step=State.PARKED.value,
            result=run.give_up.value if run.give_up is not None else "",
            detail=run.reason,
            attempts=run.used,
        )
        self.alerting.alert(
            run,
            "firing",
            run.level,
            f"{run.unit} parked: {run.reason}; retried every {interval:g}s and at once "
            "when that is back",
            "parked",
        )

    def _parking_ended(self, run: Run, state: State) -> None:
        if state is not State.PARKED and run.unparked and not self.dry_run:
            self.ledger.unpark(run.unit)
        hook = self.on_parking
        if hook is None:
            return
        try:
            hook(run.unit, run.parked if state is State.PARKED else None)
        except Exception:  # the registry's trouble must not fail the run's outcome
            import logging

            logging.getLogger("handlers.recovery").exception("parking hook failed")

    # --- the read side: which units are parked --------------------------------------------

    def parked_info(self, unit: str, now: Stamp | None = None) -> ParkedUnit | None:
        """``unit``'s parking if it is parked now (not recovered, reset or stopped since)."""
        now = now if now is not None else self._stamp()
        entry = self.ledger.entry(unit)
        last = self.store.last_incident(unit)
        mark = entry.parked
        reset = reset_at(self.store, unit, now, entry)
        interval = self._policy(unit, []).recovery.park_interval
        if mark is not None:
            known = self.store.incident(mark.incident_id) if self.store.persistent else None
            stale = (reset is not None and reset >= timeline(mark.at, now)) or (
                known is not None and known.state != "parked"
            )
            if not stale:
                return ParkedUnit(
                    unit,
                    mark.incident_id,
                    mark.waiting_for,
                    mark.reason,
                    timeline(mark.since, now),
                    timeline(mark.at, now),
                    interval,
                )
        if last is not None and last.state == "parked" and last.closed is not None:
            # The ledger lost it (a reboot cleared /run, or it was never writable):
            # what it waits for is unknown, so only the slow retry brings it back.
            if reset is not None and reset >= timeline(last.closed, now):
                return None
            at = timeline(last.closed, now)
            return ParkedUnit(unit, last.id, (), last.reason, at, at, interval)
        return None

    def parked_units(self) -> list[ParkedUnit]:
        """Every unit parked now (the listener registers them at each reconciliation)."""
        now = self._stamp()
        names = {inc.unit for inc in self.store.parked_incidents()}
        names.update(u for u in self.ledger.units() if self.ledger.entry(u).parked is not None)
        found = [self.parked_info(u, now) for u in sorted(names)]
        return [p for p in found if p is not None]

    # --- what a parked unit's registry asks ---------------------------------------------

    async def check_parked(self, unit: str, checks: tuple[str, ...]) -> tuple[bool, str]:
        """Run the probes and disk check ``unit`` waits for; ok when all of them pass."""
        policy = self._policy(unit, [])
        details: list[str] = []
        for check in checks:
            if check == parking.HEALTH and policy.health is not None:
                ok, detail = await self._probe(policy.health.probe, 1)
            elif check.startswith("depends["):
                try:
                    probe = policy.depends[int(check[len("depends[") : -1])]
                except (ValueError, IndexError):
                    continue
                ok, detail = await self._probe(probe, 1)
            elif check == parking.DISK:
                paths = [p for p in (*policy.disk.paths, *policy.directories) if p]
                statuses = await asyncio.to_thread(
                    resources.check_disk,
                    list(dict.fromkeys(paths)),
                    min_free=policy.disk.min_free,
                    min_free_inodes=policy.disk.min_free_inodes,
                )
                low = [s.reason for s in statuses if not s.ok]
                ok, detail = not low, "; ".join(low) or "disk ok"
            else:
                continue
            if not ok:
                return False, detail
            details.append(detail)
        return True, "; ".join(details) or "checks pass"

    def remind_parked(self, unit: str, day: int) -> None:
        """The daily reminder: one alert per incident and day, across processes."""
        info = self.parked_info(unit)
        if info is None:
            return
        inc = self.store.incident(info.incident_id)
        if inc is None:
            return
        policy = self._policy(unit, [])
        used, _ = self._budget(unit, policy, self._stamp())
        self.alerting.send(
            unit,
            policy,
            inc,
            "firing",
            level_of(inc) if inc.level else Level.ALERT_AND_STOP,
            f"{unit} still parked after {day} day(s): {info.reason}",
            used,
            f"parked-day-{day}",
        )
        self.alerting.flush()
