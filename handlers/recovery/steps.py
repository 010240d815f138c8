"""The actions of the ladder's states, each reduced to a :class:`~handlers.ladder.Verdict`.

One method a state (:data:`Steps.ACTIONS` maps them): read and act on systemd,
the disk and the history, set ``run.detail`` to a one-line account, and return
what was found. Which state follows is :func:`handlers.ladder.transition`'s
decision alone (the loop is in :mod:`.engine`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

# resources at import time, not on the first failure: every incident uses it
# (docs/recovery.md, "What it costs").
from handlers import adoption, backoff, ladder, resources
from handlers.correlation import Cause
from handlers.diagnose import (
    RESTARTING_SUBSTATES,
    Diagnosis,
    diagnosis_from,
    job_queued,
    restart_pending,
    settle,
)
from handlers.events import EventKind
from handlers.ladder import Level, State, Verdict
from handlers.recovery import history
from handlers.recovery.core import Moment, template_of
from handlers.recovery.dependencies import DependencySteps
from handlers.recovery.history import level_of, timeline
from handlers.recovery.model import UNIT_STATE, Run
from handlers.store import IncidentRow, Stamp
from unitgen.errors import PolicyError, SystemdError, UnitNotFoundError

if TYPE_CHECKING:
    from handlers.testhook import PausePoint
    from unitgen.model import Health, Probe

log = logging.getLogger("handlers.recovery")


# States in which a unit a restart propagates to would be restarted (or stopped).
_UP = frozenset({"active", "activating", "reloading"})


class Steps(DependencySteps):
    """The step actions; :class:`handlers.recovery.RecoveryEngine` runs them in its loop."""

    async def _act(self, state: State, run: Run) -> Verdict:
        action = {
            State.RESUMING: self._resume,
            State.DIAGNOSING: self._diagnose,
            State.CHECKING_DEPENDENCIES: self._check_dependencies,
            State.WAITING_FOR_DEPENDENCY: self._wait_for_dependency,
            State.CLEANING_UP: self._clean_up,
            State.CHECKING_RESOURCES: self._check_resources,
            State.VALIDATING_CONFIG: self._validate_config,
            State.BACKING_OFF: self._back_off,
            State.RESTARTING: self._restart,
            State.VERIFYING: self._verify,
        }[state]
        run.detail = ""
        return await action(run)

    # --- RESUMING (an incident whose owner died) ------------------------------------------

    def _adopt(self, run: Run, interrupted: adoption.Interrupted) -> None:
        inc = interrupted.incident
        run.incident = inc
        run.level = level_of(inc)
        run.resumed = interrupted
        run.notes.append(adoption.RESUMED)
        self._record_trigger(inc.id, run.unit, run.trigger, "resumed")
        log.warning("%s: incident %s %s", run.unit, inc.id, adoption.RESUMED)

    async def _resume(self, run: Run) -> Verdict:
        interrupted = run.resumed
        if interrupted is None:  # only an adopting run starts here
            raise AssertionError("RESUMING without an adopted incident")
        props = await self._properties(run.unit)
        run.used, run.last_attempt_at = self._budget(run.unit, run.policy, self._stamp())
        verdict, run.detail = adoption.resume_verdict(interrupted, props, self._boot)
        if verdict is Verdict.RESTART_NOT_MADE and run.used == 0:
            # The counted attempt has left the window (the owner died long ago): it no
            # longer counts, so making it now would be an attempt nobody counted.
            self.store.amend_last_restart(
                interrupted.incident.id, result="not-made", reason="its owner died first"
            )
            verdict = Verdict.OK
            run.detail += "; that attempt is outside the window now, so it is planned afresh"
        run.diagnosis = diagnosis_from(run.unit, props)
        run.before = {k: props[k] for k in UNIT_STATE if k in props}
        if verdict is Verdict.OK:
            run.snapshot = props  # what diagnose would read again
        elif verdict is Verdict.RESTART_UNVERIFIED:
            run.call.replaced_invocation = ""
        elif verdict is Verdict.RESTART_NOT_MADE:
            run.call.reissue = True
        return verdict

    # --- DIAGNOSING -----------------------------------------------------------------------

    async def _diagnose(self, run: Run) -> Verdict:
        unit, policy, trigger = run.unit, run.policy, run.trigger
        snapshot, run.snapshot = run.snapshot, None
        run.from_snapshot = snapshot is not None
        props = dict(snapshot) if snapshot is not None else await self._properties(unit)
        if props.get("LoadState") == "not-found":
            if run.incident is None and run.restarts == 0:
                raise UnitNotFoundError(f"unit {unit}: systemd has no such unit")
            run.detail = "systemd no longer knows the unit"
            return Verdict.NOT_FOUND
        # Only a snapshot can predate systemd's decision: systemd 252 sets failed and
        # auto-restart in one call and answers no method call in between, so a read
        # that shows failed/failed is already its final word. Waiting on a fresh read
        # (Result keeps the crash's value through a start-limit refusal, so Restart=
        # seems to cover it) cost every OnFailure= run at the start limit the whole
        # settle wait.
        if run.from_snapshot and not trigger.settled:
            props = await settle(self.bus, unit, props)
        health = trigger.source == "health"
        diag = diagnosis_from(
            unit,
            props,
            trigger_result=trigger.result if run.restarts == 0 else "",
            health_failed=health,
        )
        run.diagnosis = diag
        run.before = {k: props[k] for k in UNIT_STATE if k in props}
        if restart_pending(props):
            run.detail = f"systemd is restarting it ({diag.sub_state})"
            self._note_systemd(run)
            return Verdict.SYSTEMD_RESTARTING
        if diag.active and (not health or run.restarts > 0):
            run.detail = f"{unit} is {diag.active_state}"
            return Verdict.HEALTHY
        if (
            diag.active_state == "inactive"
            and diag.result in ("success", "")
            and trigger.source in ("listener", "reconcile")
            and run.incident is None
        ):
            # Stopped cleanly (an operator's `systemctl stop`): not a failure to undo.
            run.detail = f"{unit} is inactive and did not fail; left alone"
            return Verdict.HEALTHY
        if diag.active_state in ("activating", "deactivating", "reloading"):
            run.detail = f"systemd is acting on it ({diag.active_state}/{diag.sub_state})"
            self._note_systemd(run)
            return Verdict.SYSTEMD_RESTARTING
        now = self._stamp()
        # Read once for both questions below; the unit lock keeps other writers away.
        previous = run.previous if run.incident is None else None
        # The ledger file and the reset time, read once for the give-up and the budget.
        known = history.records(self.store, self.ledger, unit, now)
        if run.incident is None:
            gave_up = self._given_up(unit, now, previous, known)
            if gave_up is not None:
                run.incident = gave_up
                run.detail = "an earlier incident gave up; run `unitgen reset` to re-arm"
                self._record_trigger(gave_up.id, unit, trigger, "ignored-given-up")
                return Verdict.GIVEN_UP
        used, last = self._budget(unit, policy, now, known)
        run.used = max(used, run.restarts)
        run.last_attempt_at = last
        level = ladder.level_for(run.used, policy.recovery.max_attempts)
        uncounted = self._uncounted(unit)
        if uncounted is not None:
            level = Level.ALERT_AND_STOP
        if run.incident is None:
            self._open_or_continue(run, diag, now, level, previous)
        elif level != run.level:
            self._escalate(run, level)
        run.level = level
        run.detail = diag.summary()
        if uncounted is not None:
            run.detail = uncounted
            return Verdict.UNCOUNTED
        if level is Level.ALERT_AND_STOP:
            run.detail = (
                f"{run.used} restart attempts within {policy.recovery.window:g}s "
                f"(max_attempts {policy.recovery.max_attempts})"
            )
            return Verdict.BUDGET_SPENT
        return Verdict.OK

    def _open_or_continue(
        self, run: Run, diag: Diagnosis, now: Stamp, level: Level, last: IncidentRow | None
    ) -> None:
        unit, trigger = run.unit, run.trigger
        incident = None
        if last is not None and last.state == "parked":
            # A parked unit's retry (or a new failure of it): the same incident goes on.
            incident = last
            run.unparked = True
            self.store.reopen_incident(last.id)
            why = run.trigger.reason or f"a {run.trigger.source} trigger"
            self.store.record_attempt(
                last.id,
                unit,
                at=now,
                level=last.level,
                action="unpark",
                result=run.trigger.source,
                reason=why,
            )
            run.notes.append(f"resuming a parked unit ({why})")
        elif last is not None and last.state == "open":
            # A previous process (a kill -9'd listener) left it open: carry on with it.
            incident = last
            run.notes.append("continuing an interrupted incident")
        elif last is not None and last.state == "recovered" and last.closed is not None:
            since = now.mono - timeline(last.closed, now)
            if since < run.policy.recovery.min_uptime:
                incident = last
                self.store.reopen_incident(last.id)
                self.store.amend_last_restart(
                    last.id,
                    result="failed",
                    reason=f"failed again after {since:.1f}s (< min_uptime)",
                )
        if incident is None and last is not None and last.state == "recovered":
            self.alerting.resolve_superseded(unit, run.policy, last)
        if incident is not None:
            run.incident = dataclasses.replace(incident, state="open")
            run.level = level_of(incident)
            self._record_trigger(incident.id, unit, trigger, "handled")
            if level != run.level:
                self._escalate(run, level)
            return
        incident_id = self.store.open_incident(
            unit,
            source=trigger.source,
            invocation_id=trigger.invocation_id,
            classification=diag.classification,
            level=int(level),
            at=now,
            handled_at=self.clock.time(),
        )
        run.incident = IncidentRow(
            incident_id,
            unit,
            trigger.source,
            trigger.invocation_id,
            diag.classification,
            "open",
            "",
            int(level),
            now,
            None,
        )
        run.level = level
        self._emit(
            run,
            EventKind.INCIDENT_OPENED,
            source=trigger.source,
            classification=diag.classification,
            level=level.label,
        )
        if level is not Level.ALERT_AND_STOP:
            # Opened with nothing left to try: the give-up alert is the one to send.
            self.alerting.alert(
                run, "firing", level, f"{unit} failed ({diag.classification}); recovering"
            )

    def _escalate(self, run: Run, level: Level) -> None:
        previous = run.level
        run.level = level
        if run.incident is not None:
            self.store.update_incident(run.incident.id, level=int(level))
        self._emit(run, EventKind.ESCALATED, **{"from": previous.label, "to": level.label})
        if level is not Level.ALERT_AND_STOP:
            self.alerting.alert(
                run,
                "firing",
                level,
                f"{run.unit}: escalated to {level.label} after {run.used} attempt(s)",
            )

    def _note_systemd(self, run: Run) -> None:
        last = self.store.last_incident(run.unit)
        incident_id = last.id if last is not None and last.state == "open" else ""
        self._record_trigger(incident_id, run.unit, run.trigger, "systemd-restarting")

    # --- CLEANING_UP ----------------------------------------------------------------------

    async def _clean_up(self, run: Run) -> Verdict:
        from handlers import cleanup

        cfg = run.policy.cleanup
        diag = run.diagnosis
        report = cleanup.CleanupReport(dry_run=self.dry_run)
        pidfile = cfg.pidfile or (diag.pidfile if diag else "")
        if pidfile:
            cgroup = diag.control_group if diag and diag.control_group else None
            if run.from_snapshot:
                # Signals do not carry ControlGroup; the stale-PID check wants it.
                cgroup = await self._control_group(run.unit)
            report.merge(
                await asyncio.to_thread(
                    cleanup.remove_stale_pidfile,
                    pidfile,
                    unit_cgroup=cgroup,
                    dry_run=self.dry_run,
                )
            )
        for root in cfg.temp:
            report.merge(
                await asyncio.to_thread(
                    cleanup.remove_old_files,
                    root,
                    older_than=cfg.older_than,
                    dry_run=self.dry_run,
                )
            )
        run.detail = (
            f"{len(report.removed)} removed, {len(report.refused)} refused, "
            f"{report.freed_bytes} bytes"
        )
        for path, why in report.refused[:5]:
            run.notes.append(f"cleanup refused {cleanup.display_path(path)}: {why}")
        return Verdict.OK

    # --- CHECKING_RESOURCES ---------------------------------------------------------------

    def _disk_paths(self, run: Run) -> list[str]:
        paths = list(run.policy.disk.paths) + list(run.policy.directories)
        return [p for i, p in enumerate(paths) if p and p not in paths[:i]]

    async def _check_resources(self, run: Run) -> Verdict:
        policy = run.policy
        if run.diagnosis is not None and run.diagnosis.classification == "oom-kill":
            run.notes.append("the unit was oom-killed")
            self.alerting.alert(
                run, "firing", run.level, f"{run.unit} was killed by the OOM killer", "memory"
            )
        # /proc/meminfo is generated in memory: reading it cannot block like statvfs can.
        mem = resources.memory_status(policy.memory.min_available)
        if not mem.ok:
            self._group_join(run, Cause("memory", "host"))
            run.notes.append(f"memory low: {mem.reason}")
            # Recorded and alerted, but not blocking: a restart may still succeed. One
            # memory alert per incident (shared with the oom-kill one).
            self.alerting.alert(run, "firing", run.level, f"{run.unit}: {mem.reason}", "memory")
        paths = self._disk_paths(run)
        if not paths:
            run.detail = "no disk paths declared" + (
                f"; memory low: {mem.reason}" if not mem.ok else ""
            )
            return Verdict.OK
        disk = policy.disk

        def low(checked: list[str]) -> list[resources.DiskStatus]:
            statuses = resources.check_disk(
                checked, min_free=disk.min_free, min_free_inodes=disk.min_free_inodes
            )
            return [s for s in statuses if not s.ok]

        problems = await asyncio.to_thread(low, paths)
        if problems and disk.cleanup:
            # Only files on a full filesystem can help it: emptying cleanup directories
            # that live elsewhere would destroy logs and free nothing that matters.
            full = [s.path for s in problems]
            roots = await asyncio.to_thread(on_same_filesystem, list(disk.cleanup), full)
            if roots:
                from handlers import cleanup

                self._events_at(run, Moment.WAIT)  # freeing space may take a while
                report = await asyncio.to_thread(
                    cleanup.free_space,
                    roots,
                    enough=lambda: not low(full),
                    dry_run=self.dry_run,
                )
                run.notes.append(f"freed {report.freed_bytes} bytes from the cleanup directories")
                problems = await asyncio.to_thread(low, paths)
            else:
                run.notes.append("no cleanup directory is on the full filesystem")
        if problems:
            run.detail = "; ".join(s.reason for s in problems)
            for status in problems:
                self._group_join(run, Cause("disk", status.path))
            return Verdict.DISK_LOW
        run.detail = "disk ok" + (f"; memory low: {mem.reason}" if not mem.ok else "")
        return Verdict.OK

    # --- VALIDATING_CONFIG ----------------------------------------------------------------

    async def _validate_config(self, run: Run) -> Verdict:
        argv = run.policy.validate
        if not argv:
            run.detail = "no validate command declared"
            return Verdict.OK
        self._events_at(run, Moment.WAIT)  # up to validate_timeout
        ok, run.detail = await validate(argv, run.policy.recovery.validate_timeout)
        if not ok:
            self._group_join(run, Cause("config", " ".join(argv)))
        return Verdict.OK if ok else Verdict.CONFIG_INVALID

    # --- BACKING_OFF / RESTARTING / VERIFYING ---------------------------------------------

    async def _back_off(self, run: Run) -> Verdict:
        self._group_by_exit_status(run)
        delay = backoff.delay_for(run.used + 1, run.policy.recovery.backoff, self.rng)
        wait = backoff.remaining(delay, run.last_attempt_at, self.clock.monotonic())
        run.detail = f"attempt {run.used + 1}: waiting {wait:.3f}s (delay {delay:.3f}s)"
        sleeps = wait > 0 and not self.dry_run
        if self._pause is not None or sleeps:
            self._events_at(run, Moment.WAIT)
        if self._pause is not None:
            await self._pause.reached("backing-off", run.unit, run.used + 1)
        if sleeps:
            await self.clock.sleep(wait)
        return Verdict.OK

    def _group_by_exit_status(self, run: Run) -> None:
        """Instances of one template failing with the same exit status share a cause."""
        diag = run.diagnosis
        template = template_of(run.unit)
        if self.correlator is None or run.group or diag is None or not template:
            return
        if diag.classification == "exit-code" and diag.exec_main_status:
            status = diag.exec_main_status
            self._group_join(run, Cause("exit-status", f"{template} status {status}"))

    async def _restart(self, run: Run) -> Verdict:
        unit = run.unit
        at = self._stamp()
        # A re-issued attempt was counted, in the history and the ledger, by its dead owner.
        uncounted = None if run.call.reissue else self._count_attempt(run, at)
        if uncounted is not None:
            run.detail = uncounted
            return Verdict.UNCOUNTED
        started = self.clock.monotonic()
        run.restarts += 1
        run.last_attempt_at = started
        run.call.took = None
        if run.call.reissue:
            # Counted by the owner that died before making it: made now, counted once.
            run.call.reissue = False
            run.detail = (
                f"attempt {run.used} of {run.policy.recovery.max_attempts}"
                " (counted before its owner died)"
            )
            self._flush_rows(run)
        else:
            run.used += 1
            run.detail = f"attempt {run.used} of {run.policy.recovery.max_attempts}"
            # Counted before it is made: a process killed right after RestartUnit must
            # not leave an attempt the next run does not see (the budget is never exceeded).
            self._record_step(run, "restart", "started", run.detail, 0.0, at=at)
        if self._pause is not None:
            await self._pause.reached("restarting", unit, run.used)
        if run.group or self._rate.per_second > 0:
            self._events_at(run, Moment.WAIT)  # a slot or the rate may make it wait
            await self._restart_admission(run)
        try:
            if run.level is Level.RESTART_WITH_DEPENDENCIES:
                await self._restart_dependencies(run)
            self._expect_restart(run)
            # Reset (start-limit counter, failed state) and restart in one go.
            run.call.pinned = True
            _job, reset = await self.bus.reset_and_restart(unit, "replace")
            # Not loaded (garbage-collected while inactive): nothing to reset, and
            # RestartUnit loads it again. Any other refusal: the restart went ahead.
            if reset is not None and not isinstance(reset, UnitNotFoundError):
                run.notes.append(f"reset-failed refused, restarted anyway: {reset}")
        except SystemdError as exc:
            self._forget_expectation(run)
            await self._unpin(run)
            run.detail = f"restart refused: {exc}"
            # The loop writes the failed attempt's result, with this duration, as for
            # any attempt that failed: one write, not a second one with the same values.
            run.call.took = self.clock.monotonic() - started
            return Verdict.FAILED
        finally:
            # Whatever came before the restart (journal, alerts) waits until it is issued.
            self._after_restart_call(run)
        # The row stays "started" until verify's result is written, with this duration:
        # one write per attempt fewer than amending it here as well.
        run.call.took = self.clock.monotonic() - started
        return Verdict.OK

    def _expect_restart(self, run: Run) -> None:
        """Collect the unit's changes from before the restart call, so verify reads nothing."""
        self._forget_expectation(run)
        if run.before:
            run.call.expected = self.bus.expect_changes(run.unit)

    def _after_restart_call(self, run: Run) -> None:
        self._events_at(run, Moment.RESTART_SENT)
        self._start_journal(run)
        self.alerting.flush()

    async def _restart_dependencies(self, run: Run) -> None:
        diag = run.diagnosis
        if diag is None:
            return
        for dep in dict.fromkeys((*diag.requires, *diag.binds_to)):
            if dep in run.visited or not dep.endswith(".service"):
                continue
            others = await self._active_dependents(dep, run.unit)
            if others:
                # A restart of a shared dependency takes every active unit that
                # Requires= or BindsTo= it along: one failing client must not restart
                # the database under all the others.
                shown = ", ".join(others[:5]) + (
                    f" and {len(others) - 5} more" if len(others) > 5 else ""
                )
                self._record_step(
                    run, "restart-dependency", "skipped", f"{dep}: also needed by {shown}", 0.0
                )
                continue
            # On disk before the call, as the unit's own restart row is: a daemon that
            # dies right after it must not leave a start nobody recorded.
            self._record_step(run, "restart-dependency", "started", dep, 0.0)
            self._flush_rows(run)
            await self.bus.restart(dep, "replace")

    async def _active_dependents(self, dep: str, unit: str) -> list[str]:
        """The active units other than ``unit`` that a restart of ``dep`` would restart."""
        try:
            names = [
                str(n)
                for prop in ("RequiredBy", "BoundBy")
                for n in await self.bus.get_property(dep, prop)
            ]
        except SystemdError:
            return []  # not loaded: nothing holds on to it
        others = sorted({n for n in names if n != unit})
        states = await asyncio.gather(
            *(self.bus.get_property(n, "ActiveState") for n in others), return_exceptions=True
        )
        return [n for n, state in zip(others, states, strict=True) if state in _UP]

    async def _verify(self, run: Run) -> Verdict:
        unit = run.unit
        if self._pause is not None:
            await self._pause.reached("verifying", unit, run.used)
        old = run.call.replaced_invocation
        if old is None:
            old = run.diagnosis.invocation_id if run.diagnosis is not None else ""

        last_start = run.before.get("InactiveExitTimestampMonotonic")
        job_seen = False

        def settled(p: dict[str, Any]) -> bool:
            nonlocal job_seen
            if p.get("SubState") in RESTARTING_SUBSTATES:
                return True  # it crashed after our start and systemd's Restart= has it
            if job_queued(p):
                job_seen = True
                return False  # our restart job has not run yet
            if old and diagnosis_from(unit, p).invocation_id == old:
                return False  # still the failed run we saw before restarting
            if (
                p.get("ActiveState") == "inactive"
                and not job_seen
                and last_start is not None
                and p.get("InactiveExitTimestampMonotonic") == last_start
            ):
                # Not started since, and no job seen: a unit that was inactive before
                # (stopped with its dependency) whose start job has not run yet. A job
                # that ran without starting it (a condition) ends the wait.
                return False
            return p.get("ActiveState") in ("active", "failed", "inactive")

        timeout = run.policy.recovery.start_timeout
        expected, run.call.expected = run.call.expected, None
        try:
            # With an expectation: the changes since just before RestartUnit, applied
            # to the state the diagnosis saw; no LoadUnit or GetAll while systemd
            # starts the unit.
            props = await self._wait_unit(
                unit, settled, timeout, since=expected, initial=dict(run.before)
            )
        except SystemdError as exc:
            run.detail = f"not active within {timeout:g}s: {exc}"
            return Verdict.FAILED
        finally:
            # The restart has run (or will not): the unit can no longer be unloaded
            # between our calls, so the pin goes, now that it costs the start nothing.
            await self._unpin(run)
            self._release_slot(run)
        if props.get("SubState") in RESTARTING_SUBSTATES:
            run.detail = "crashed again; systemd's Restart= took over"
            return Verdict.SYSTEMD_RESTARTING
        if props.get("ActiveState") != "active":
            run.detail = (
                f"{props.get('ActiveState')}/{props.get('SubState')} after restart, "
                f"result {await self._result_of(unit, props)}"
            )
            return Verdict.FAILED
        health = run.policy.health
        if health is not None:
            ok, detail = await self._started_healthy(health)
            if not ok:
                run.detail = f"active but unhealthy: {detail}"
                return Verdict.FAILED
        # MTTR ends here, when it is active and healthy, not after the uptime watch.
        run.active_at = self._stamp()
        if self.watch_uptime and run.policy.recovery.min_uptime > 0:
            return await self._watch_uptime(run, props)
        run.detail = f"active (attempt {run.used})"
        return Verdict.OK

    async def _started_healthy(self, health: Health) -> tuple[bool, str]:
        """The start-up probe passes ``successes`` times within ``start_period``.

        A restarted service gets the same grace the listener gives it: a slow
        starter probed a few times and declared failed would be restarted again,
        in a loop, by the very ladder meant to recover it.
        """
        if health.start_period <= 0:
            return await self._probe(health.probe, max(1, health.failures))
        deadline = self.clock.monotonic() + health.start_period
        passes = 0
        while True:
            ok, detail = await self._probe(health.start_probe, 1)
            passes = passes + 1 if ok else 0
            if passes >= health.successes:
                return True, detail
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False, f"not healthy within start_period {health.start_period:g}s: {detail}"
            await self.clock.sleep(min(health.start_interval, left))

    async def _watch_uptime(self, run: Run, props: dict[str, Any]) -> Verdict:
        """Active is not enough: it must stay up for min_uptime (signal-driven wait)."""
        unit = run.unit
        invocation = diagnosis_from(unit, props).invocation_id
        min_uptime = run.policy.recovery.min_uptime
        started = self.clock.monotonic()

        def ended(p: dict[str, Any]) -> bool:
            return (
                p.get("ActiveState") != "active"
                or p.get("SubState") in RESTARTING_SUBSTATES
                or diagnosis_from(unit, p).invocation_id != invocation
            )

        try:
            after = await self._wait_unit(unit, ended, min_uptime)
        except SystemdError:
            run.detail = f"active and up for {min_uptime:g}s (attempt {run.used})"
            return Verdict.OK
        took = self.clock.monotonic() - started
        run.detail = (
            f"failed again after {took:.1f}s (< min_uptime {min_uptime:g}s): "
            f"{after.get('ActiveState')}/{after.get('SubState')}"
        )
        if after.get("SubState") in RESTARTING_SUBSTATES:
            return Verdict.SYSTEMD_RESTARTING
        return Verdict.FAILED


def test_pause() -> PausePoint | None:
    """The test-only pause point (handlers/testhook.py); None unless its variables are set."""
    if "UNITGEN_TEST_PAUSE_AT" not in os.environ:
        return None
    from handlers.testhook import from_environment

    return from_environment(os.environ)


def on_same_filesystem(roots: list[str], paths: list[str]) -> list[str]:
    """The roots that live on the filesystem of one of ``paths`` (nearest existing parent)."""

    def device(path: str) -> int | None:
        current = Path(path)
        while True:
            try:
                return current.stat().st_dev
            except FileNotFoundError:
                if current.parent == current:
                    return None
                current = current.parent
            except OSError:
                return None

    wanted = {device(p) for p in paths} - {None}
    return [r for r in roots if device(r) in wanted]


async def validate(argv: tuple[str, ...], timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    from handlers import configcheck

    checked = await configcheck.validate_config(argv, timeout=timeout)
    return bool(checked.ok), str(checked.reason)


async def run_probe(probe: Probe, attempts: int) -> tuple[bool, str]:
    from handlers.probes import ProbeSpec, probe_with_backoff

    try:
        spec = ProbeSpec.from_model(probe)
    except PolicyError as exc:
        return False, str(exc)
    result = await probe_with_backoff(spec, attempts=max(1, attempts), base=0.5, max_delay=5.0)
    return result.ok, result.detail
