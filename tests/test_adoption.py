"""Adopting an incident whose owner died, against a fake systemd and clock (fast).

The owner's death is a cancelled task here (its lock goes with it, as the
kernel's does for a ``kill -9``); tests/test_adoption_sandbox.py kills a real
``unitgen watch`` with SIGKILL on a real manager.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy
from test_recovery import FAST, ONFAIL, FakeBus, FakeClock, FakeUnit, _engine

from handlers import adoption, testhook
from handlers.events import EventKind
from handlers.ladder import State, Verdict
from handlers.locks import UnitLock
from handlers.recovery import Trigger
from handlers.store import AttemptRow, IncidentRow, Stamp, Store
from unitgen.policy import Policy

UNIT = "api.service"
THREE = dataclasses.replace(FAST, max_attempts=3)


async def _die(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _restart_rows(tmp_path: Path) -> list[AttemptRow]:
    store = Store.open(_paths(tmp_path).database)
    try:
        inc = store.last_incident(UNIT)
        assert inc is not None
        return [a for a in store.attempts(inc.id) if a.action == "restart"]
    finally:
        store.close()


def _history(tmp_path: Path) -> tuple[list[IncidentRow], list[AttemptRow], list[str]]:
    store = Store.open(_paths(tmp_path).database)
    try:
        incidents = store.incidents(UNIT)
        rows = [a for inc in incidents for a in store.attempts(inc.id)]
        return incidents, rows, [t[3] for t in store.triggers(UNIT)]
    finally:
        store.close()


@pytest.mark.asyncio
async def test_owner_killed_in_backoff_is_resumed_not_called_a_duplicate(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit(UNIT, behaviour=lambda n: "failed" if n == 1 else "active")
    bus = FakeBus(unit, clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    in_backoff = asyncio.Event()

    async def hang(seconds: float) -> None:
        clock.advance(2.0)  # 2 s of the 5 s back-off before attempt 2 pass, then it dies
        in_backoff.set()
        await asyncio.Event().wait()

    clock.sleep = hang  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover(UNIT, ONFAIL))
    await asyncio.wait_for(in_backoff.wait(), 5)
    await _die(task)
    engine.store.close()
    assert len(bus.restarted()) == 1
    # The failed restart's new invocation failed: its InvocationID is the trigger.
    invocation = unit.props["InvocationID"].hex()

    clock2 = FakeClock()
    clock2.mono, clock2.wall = clock.mono, clock.wall
    engine2, sink, _a2 = _engine(tmp_path, bus, clock2)
    out = await engine2.recover(UNIT, Trigger("listener", invocation_id=invocation))
    await engine2.aclose()
    assert out.state is State.RECOVERED, out
    assert "already handled" not in out.reason and adoption.RESUMED in out.notes
    assert len(bus.restarted()) == 2 and out.attempts == 2
    assert clock2.sleeps == [pytest.approx(3.0)]  # only what was left of the back-off
    incidents, rows, dispositions = _history(tmp_path)
    assert [i.state for i in incidents] == ["recovered"]  # one incident, closed once
    resume = [r for r in rows if r.action == "resume"]
    assert len(resume) == 1 and resume[0].reason.startswith(adoption.RESUMED)
    assert [r.result for r in rows if r.action == "restart"] == ["failed", "ok"]
    assert dispositions[-1] == "resumed"
    finished = [e for e in sink.events if e.kind is EventKind.STEP_FINISHED]
    assert finished[0].fields["step"] == "resuming"
    assert str(finished[0].fields["detail"]).startswith(adoption.RESUMED)
    # The same invocation again, now that the incident is closed: a duplicate.
    engine3, _s3, _a3 = _engine(tmp_path, bus, clock2)
    unit.props.update(ActiveState="failed")
    again = await engine3.recover(UNIT, Trigger("listener", invocation_id=invocation))
    await engine3.aclose()
    assert "already handled" in again.reason and len(bus.restarted()) == 2


@pytest.mark.asyncio
async def test_restart_counted_but_never_made_is_made_once_and_counted_once(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    real = bus.reset_and_restart
    counted = asyncio.Event()

    async def die_before_the_call(name: str, mode: str = "replace") -> Any:
        counted.set()  # the restart row is on disk; RestartUnit never goes out
        await asyncio.Event().wait()

    bus.reset_and_restart = die_before_the_call  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover(UNIT, ONFAIL))
    await asyncio.wait_for(counted.wait(), 5)
    await _die(task)
    engine.store.close()
    assert [r.result for r in _restart_rows(tmp_path)] == ["started"]
    bus.reset_and_restart = real  # type: ignore[method-assign]

    engine2, _s2, _a2 = _engine(tmp_path, bus, clock)
    out = await engine2.recover(UNIT, ONFAIL)  # the OnFailure= fallback, same invocation
    await engine2.aclose()
    assert out.state is State.RECOVERED and out.restarts == 1 and out.attempts == 1
    assert len(bus.restarted()) == 1
    assert [r.result for r in _restart_rows(tmp_path)] == ["ok"]


@pytest.mark.asyncio
async def test_a_counted_restart_that_left_the_window_is_not_made_uncounted(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    counted = asyncio.Event()

    async def die_before_the_call(name: str, mode: str = "replace") -> Any:
        counted.set()
        await asyncio.Event().wait()

    real = bus.reset_and_restart
    bus.reset_and_restart = die_before_the_call  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover(UNIT, ONFAIL))
    await asyncio.wait_for(counted.wait(), 5)
    await _die(task)
    engine.store.close()
    bus.reset_and_restart = real  # type: ignore[method-assign]
    clock.advance(THREE.window + 1.0)  # the daemon stayed dead longer than the window

    engine2, _s2, _a2 = _engine(tmp_path, bus, clock)
    out = await engine2.recover(UNIT, ONFAIL)
    await engine2.aclose()
    assert out.state is State.RECOVERED and out.restarts == 1 and out.attempts == 1
    assert len(bus.restarted()) == 1
    assert [r.result for r in _restart_rows(tmp_path)] == ["not-made", "ok"]


@pytest.mark.asyncio
async def test_restart_made_and_failed_while_unowned_counts_as_that_attempt(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT, behaviour=lambda n: "failed" if n == 1 else "active"))
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    real = bus.restart
    made = asyncio.Event()

    async def die_after_the_call(name: str, mode: str = "replace") -> str:
        job = await real(name, mode)
        made.set()
        await asyncio.Event().wait()
        return job

    bus.restart = die_after_the_call  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover(UNIT, ONFAIL))
    await asyncio.wait_for(made.wait(), 5)
    await _die(task)
    engine.store.close()
    bus.restart = real  # type: ignore[method-assign]
    clock.advance(60.0)  # the back-off of attempt 2 (5 s) is long over

    engine2, _s2, _a2 = _engine(tmp_path, bus, clock)
    out = await engine2.recover(UNIT, Trigger("reconcile"))
    await engine2.aclose()
    assert out.state is State.RECOVERED and out.attempts == 2 and out.restarts == 1
    assert len(bus.restarted()) == 2
    assert clock.sleeps == []
    assert [r.result for r in _restart_rows(tmp_path)] == ["failed", "ok"]


@pytest.mark.asyncio
async def test_an_incident_left_to_systemd_is_continued_not_adopted(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(
        FakeUnit(UNIT, restart="on-failure", behaviour=lambda n: "auto-restart"), clock=clock
    )
    engine, _s, _a = _engine(tmp_path, bus, clock)
    out = await engine.recover(UNIT, ONFAIL)
    assert out.state is State.WAITING_FOR_SYSTEMD
    assert adoption.find_interrupted(engine.store, UNIT) is None
    assert engine.unowned_incidents() == adoption.Unowned([], [UNIT])
    await engine.aclose()


@pytest.mark.asyncio
async def test_interrupted_units_are_those_whose_lock_is_free(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT), clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    now = Stamp(clock.mono, clock.wall, "b")
    engine.store.open_incident(
        UNIT, source="listener", invocation_id="", classification="x", level=1, at=now
    )
    assert engine.unowned_incidents() == adoption.Unowned([UNIT], [])
    with UnitLock(_paths(tmp_path).lock_dir, UNIT):  # a live owner in another process
        assert engine.unowned_incidents().interrupted == []
    await engine.aclose()


# --- the decision, pure ---------------------------------------------------------------


def _interrupted(pending: AttemptRow | None, invocation: str = "aa" * 16) -> adoption.Interrupted:
    at = Stamp(100.0, 1_700_000_000.0, "boot")
    inc = IncidentRow("i", UNIT, "listener", invocation, "signal", "open", "", 1, at, None)
    return adoption.Interrupted(inc, pending, pending)


def _restart_row(mono: float = 100.0, wall: float = 1_700_000_000.0) -> AttemptRow:
    return AttemptRow("i", UNIT, Stamp(mono, wall, "boot"), 1, "restart", "started", "", 0.0)


@pytest.mark.parametrize(
    ("props", "want"),
    [
        ({"ActiveState": "active", "SubState": "running"}, Verdict.RESTART_UNVERIFIED),
        ({"ActiveState": "activating", "SubState": "start"}, Verdict.RESTART_UNVERIFIED),
        (
            {"ActiveState": "failed", "SubState": "failed", "Job": (7, "/j/7")},
            Verdict.RESTART_UNVERIFIED,
        ),
        ({"ActiveState": "activating", "SubState": "auto-restart"}, Verdict.SYSTEMD_RESTARTING),
        (
            {"ActiveState": "failed", "InactiveExitTimestampMonotonic": 99_000_000},
            Verdict.RESTART_NOT_MADE,
        ),
        (
            {"ActiveState": "failed", "InactiveExitTimestampMonotonic": 101_000_000},
            Verdict.FAILED,
        ),
        ({"ActiveState": "failed", "InvocationID": bytes([0xAA] * 16)}, Verdict.RESTART_NOT_MADE),
        ({"ActiveState": "failed", "InvocationID": bytes([0xBB] * 16)}, Verdict.FAILED),
        ({"ActiveState": "failed"}, Verdict.FAILED),  # unknown: never a second restart
        ({"LoadState": "not-found"}, Verdict.NOT_FOUND),
    ],
)
def test_resume_verdict_after_a_counted_restart(props: dict[str, Any], want: Verdict) -> None:
    verdict, detail = adoption.resume_verdict(_interrupted(_restart_row()), props, "boot")
    assert verdict is want and detail.startswith(adoption.RESUMED)


def test_resume_before_the_restart_runs_the_checks_again() -> None:
    verdict, detail = adoption.resume_verdict(_interrupted(None), {"ActiveState": "failed"}, "b")
    assert verdict is Verdict.OK and detail.startswith(adoption.RESUMED)


def test_started_since_uses_the_wall_clock_across_a_reboot() -> None:
    row = _restart_row(mono=5.0, wall=1_700_000_000.0)
    later = {"InactiveExitTimestamp": 1_700_000_001_000_000, "InactiveExitTimestampMonotonic": 1}
    earlier = {"InactiveExitTimestamp": 1_699_999_999_000_000}
    assert adoption.started_since(later, row.at, "another-boot", "") is True
    assert adoption.started_since(earlier, row.at, "another-boot", "") is False
    never = {"InactiveExitTimestampMonotonic": 0}
    assert adoption.started_since(never, row.at, "boot", "") is False


# --- the test-only pause point ----------------------------------------------------------


@pytest.mark.asyncio
async def test_pause_point_stops_exactly_one_process_per_marker(tmp_path: Path) -> None:
    marker = tmp_path / "paused"
    env = {testhook.PAUSE_AT: "restarting:2", testhook.PAUSE_FILE: str(marker)}
    point = testhook.from_environment(env)
    assert point is not None
    await point.reached("restarting", UNIT, 1)  # another attempt: goes on
    await point.reached("verifying", UNIT, 2)  # another step: goes on
    assert not marker.exists()
    paused = asyncio.create_task(point.reached("restarting", UNIT, 2))
    await asyncio.sleep(0.05)
    assert not paused.done() and marker.read_text().split()[1:] == ["restarting", UNIT]
    await point.reached("restarting", UNIT, 2)  # the marker exists: the adopter goes on
    paused.cancel()
    with pytest.raises(asyncio.CancelledError):
        await paused
    assert testhook.from_environment({}) is None
    assert testhook.from_environment({testhook.PAUSE_AT: "rm -rf", "x": "y"}) is None


def test_the_engine_has_no_pause_point_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testhook.PAUSE_AT, raising=False)
    from handlers.recovery import _test_pause

    assert _test_pause() is None
