"""The dependency states of the ladder: CHECKING_DEPENDENCIES and WAITING_FOR_DEPENDENCY.

Kept apart from :mod:`.steps` for size: a dependency is recovered (joined, in a
group, or restarted), waited for, or found to be a cycle here, each reduced to a
:class:`~handlers.ladder.Verdict` like every other step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from handlers.correlation import Cause
from handlers.ladder import DEPENDENCY_WAIT, MAX_DEPENDENCY_ROUNDS, Level, State, Verdict
from handlers.recovery.core import Moment
from handlers.recovery.grouping import Grouping
from handlers.recovery.model import Outcome, Run, Trigger
from unitgen.errors import SystemdError

if TYPE_CHECKING:
    from unitgen.model import Probe

log = logging.getLogger("handlers.recovery")

_NEVER_FAILED = (".target", ".slice")


class DependencySteps(Grouping):
    """CHECKING_DEPENDENCIES and WAITING_FOR_DEPENDENCY (mixed into :class:`.steps.Steps`)."""

    # --- CHECKING_DEPENDENCIES / WAITING_FOR_DEPENDENCY -----------------------------------

    def _systemd_dependencies(self, run: Run) -> list[str]:
        diag = run.diagnosis
        if diag is None:
            return []
        seen: list[str] = []
        for name in (*diag.requires, *diag.binds_to, *diag.wants):
            if name not in seen and name != run.unit:
                seen.append(name)
        return seen

    async def _check_dependencies(self, run: Run) -> Verdict:
        down: list[str] = []
        details: list[str] = []
        gave_up: list[str] = []
        candidates = [
            d
            for d in self._systemd_dependencies(run)
            # A target or slice has no failed state (systemd's target.c, slice.c): asking
            # about basic.target on every incident would cost a round trip for nothing.
            if not d.endswith(_NEVER_FAILED)
        ]
        # Visited ones are being recovered further up this chain: a cycle. Skipped, so
        # it terminates, and reported, so it is seen.
        self._report_cycle(run, [d for d in candidates if d in run.visited])
        deps = [d for d in candidates if d not in run.visited]
        states = await self._active_states(deps)
        required = set(run.diagnosis.requires + run.diagnosis.binds_to) if run.diagnosis else set()
        for dep in deps:
            state = states.get(dep)
            ours = dep in self._running
            if state != "failed" and not (ours and state != "active"):
                self._dependency_seen(run, dep, state, dep in required, down, details)
                continue
            # The shared cause of everything that needs it: recovered once, first.
            self._group_join(run, Cause("dependency", dep, dep))
            # Its own run emits events now: ours, made before, go out first.
            self._events_at(run, Moment.WAIT)
            outcome = await self._waiting(self._recover_dependency(dep, run))
            run.dependency_back = True
            details.append(f"{dep}: {outcome.state.value} ({outcome.reason})")
            if outcome.state not in (State.RECOVERED, State.NOT_NEEDED):
                down.append(dep)
                if outcome.state is State.GAVE_UP:
                    gave_up.append(dep)
        run.dependencies_gave_up = tuple(gave_up)
        self._group_checked(run.unit)
        if run.policy.depends:
            self._events_at(run, Moment.WAIT)  # probes may take seconds
        for i, probe in enumerate(run.policy.depends):
            ok, detail = await self._probe(probe, 3)
            if not ok:
                down.append(f"depends[{i}]")
                details.append(detail)
        run.waiting_on = tuple(down)
        if details and run.diagnosis is not None and run.diagnosis.classification != "dependency":
            # A dependency had failed: that, not the unit's own Result, is the cause.
            run.diagnosis = dataclasses.replace(run.diagnosis, classification="dependency")
            if run.incident is not None:
                self.store.update_incident(run.incident.id, classification="dependency")
        if run.policy.depends and down and self.correlator is not None:
            for name in down:
                if name.startswith("depends["):
                    probe = run.policy.depends[int(name[len("depends[") : -1])]
                    self._group_join(run, Cause("depends", _probe_key(probe)))
        if down:
            run.detail = "dependency down: " + "; ".join(details)
            return Verdict.DEPENDENCY_DOWN
        run.detail = "; ".join(details) or "dependencies active"
        if run.dependency_back and await self._back_by_itself(run):
            return Verdict.HEALTHY
        if run.level is Level.CLEANUP_THEN_RESTART:
            return Verdict.CLEANUP_NEXT
        return Verdict.OK

    def _dependency_seen(
        self,
        run: Run,
        dep: str,
        state: str | None,
        required: bool,
        down: list[str],
        details: list[str],
    ) -> None:
        """A dependency not failed and not ours to recover: grouped, waited for, or fine."""
        if self.correlator is None:
            return
        if state in ("activating", "deactivating"):
            # systemd is (re)starting it: wait for it rather than restart ahead of it.
            self._group_join(run, Cause("dependency", dep, dep))
            down.append(dep)
            details.append(f"{dep}: {state}")
        elif self.correlator.caused(dep) is not None or (state == "inactive" and required):
            # Recovered moments ago by us (the same incident), or a required unit that is
            # down: the shared cause, though restarting this unit will start it too.
            self._group_join(run, Cause("dependency", dep, dep))

    async def _back_by_itself(self, run: Run) -> bool:
        """Once a dependency is back, is the unit too (systemd's Restart=, socket activation)?"""
        state = (await self._active_states([run.unit])).get(run.unit)
        if state != "active":
            return False
        run.detail += f"; {run.unit} came back with its dependency: not restarted"
        return True

    def _report_cycle(self, run: Run, looping: list[str]) -> None:
        for dep in looping:
            if dep == run.unit:
                continue
            note = f"dependency cycle: {run.unit} needs {dep}, which is being recovered for it"
            if note not in run.notes:
                run.notes.append(note)
                log.warning("%s", note)
                self._record_step(run, "dependency-cycle", "skipped", note, 0.0)

    async def _active_states(self, units: list[str]) -> dict[str, str]:
        """ActiveState of each unit, in one ListUnitsByPatterns."""
        if not units:
            return {}
        # Units that are not loaded are not listed, and are not failed either.
        rows = await self.bus.list_units(patterns=units)
        return {r.name: r.active_state for r in rows}

    async def _recover_dependency(self, dep: str, run: Run) -> Outcome:
        trigger = Trigger("dependency", reason=f"dependency of {run.unit}")
        running = self._running.get(dep)
        if running is not None:
            return await asyncio.shield(running)
        return await self._as_task(dep, trigger, run.visited, f"recover dependency {dep}")

    async def _wait_for_dependency(self, run: Run) -> Verdict:
        run.dependency_rounds += 1
        if run.dependencies_gave_up and set(run.dependencies_gave_up) >= set(run.waiting_on):
            # Its ladder gave up: nothing will bring it back within any wait, and restarting
            # this unit would only fail again. It waits for its cause (the group's alert
            # says so) instead of a restart in a loop.
            names = ", ".join(run.dependencies_gave_up)
            run.detail = f"waiting for {names}, whose recovery gave up; not restarted"
            return Verdict.DEPENDENCY_STILL_DOWN
        bound = min(DEPENDENCY_WAIT, run.policy.recovery.start_timeout)
        still: list[str] = []
        for name in run.waiting_on:
            if name.startswith("depends["):
                index = int(name[len("depends[") : -1])
                probe = run.policy.depends[index]
                ok, detail = await self._probe(probe, max(1, int(bound // 5)))
                if not ok:
                    still.append(detail)
                continue
            try:
                await self._waiting(
                    self._wait_unit(name, lambda p: p.get("ActiveState") == "active", bound)
                )
            except SystemdError as exc:
                still.append(f"{name}: {exc}")
        if still or run.dependency_rounds > MAX_DEPENDENCY_ROUNDS:
            run.detail = "still down after waiting: " + ("; ".join(still) or "flapping")
            return Verdict.DEPENDENCY_STILL_DOWN
        run.detail = "dependencies back: " + ", ".join(run.waiting_on)
        run.dependency_back = True
        return Verdict.DEPENDENCY_BACK


def _probe_key(probe: Probe) -> str:
    """What identifies a declared external dependency across units: its target."""
    target = probe.target if isinstance(probe.target, str) else " ".join(probe.target)
    return f"{probe.kind} {target}"
