"""The recovery engine against a fake systemd and a fake clock: the ladder's behaviour, fast.

The sandbox tests (tests/test_recovery_sandbox.py) run the same engine against a
real systemd; these pin the decisions: which state, how many restarts, which
pauses, which alerts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from clocks import FakeClock
from hypothesis import given
from hypothesis import strategies as st
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy

from handlers.bus import Expectation, UnitInfo
from handlers.events import Event, EventKind
from handlers.ladder import Level, State
from handlers.locks import UnitLock
from handlers.recovery import RecoveryEngine, Trigger
from handlers.store import Store
from unitgen.errors import SystemdError, UnitNotFoundError, UsageError
from unitgen.model import Backoff, Disk, Recovery, Threshold
from unitgen.policy import Policy


class FakeUnit:
    def __init__(
        self,
        name: str,
        *,
        state: str = "failed",
        result: str = "exit-code",
        sub: str | None = None,
        restart: str = "no",
        requires: tuple[str, ...] = (),
        behaviour: Callable[[int], str] = lambda n: "active",
    ) -> None:
        self.name = name
        self.props: dict[str, Any] = {
            "LoadState": "loaded",
            "ActiveState": state,
            "SubState": sub or ("failed" if state == "failed" else "running"),
            "Result": result,
            "ExecMainCode": 1,
            "ExecMainStatus": 1,
            "NRestarts": 0,
            "MainPID": 0,
            "PIDFile": "",
            "InvocationID": b"\x01" * 16,
            "ControlGroup": f"/{name}",
            "Restart": restart,
            "Job": [0, "/"],
            "Requires": list(requires),
            "BindsTo": [],
            "Wants": [],
            "After": list(requires),
        }
        self.behaviour = behaviour  # restart number -> "active" | "failed" | "auto-restart"
        self.restarts = 0


class FakeBus:
    """An instant systemd: the engine's whole SystemdClient (tests/test_systemd_client.py)."""

    # wait_for reads everything, and is called with (name, predicate, timeout) alone,
    # which lets a test replace it with a function of those three.
    selects_interfaces = False

    def __init__(self, *units: FakeUnit, clock: FakeClock | None = None) -> None:
        self.units = {u.name: u for u in units}
        self.calls: list[tuple[str, str]] = []
        self.clock = clock

    def _unit(self, name: str) -> FakeUnit | None:
        return self.units.get(name)

    async def unit_properties(self, name: str) -> dict[str, Any]:
        u = self._unit(name)
        if u is None:
            return {"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}
        return dict(u.props)

    async def get_property(
        self, name: str, prop: str, interface: str = "org.freedesktop.systemd1.Unit"
    ) -> Any:
        u = self._unit(name)
        if u is None:
            raise UnitNotFoundError(name)
        if prop not in u.props:
            raise SystemdError(f"unit {name}: no property {prop}")
        return u.props[prop]

    async def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]:
        # Every unit of the fake is loaded; others are not listed, as by systemd.
        return [
            UnitInfo(name, "", "loaded", u.props["ActiveState"], u.props["SubState"], "", 0)
            for name, u in self.units.items()
            if any(fnmatch.fnmatchcase(name, p) for p in patterns or ("*",))
            and (not states or u.props["ActiveState"] in states)
        ]

    def expect_changes(self, name: str) -> Expectation | None:
        return None  # no signals to collect: verify reads instead

    def forget(self, expectation: Expectation) -> None:
        pass

    async def reset_failed(self, name: str) -> None:
        self.calls.append(("reset_failed", name))
        u = self._unit(name)
        if u is not None and u.props["ActiveState"] == "failed":
            u.props["ActiveState"] = "inactive"

    async def restart(self, name: str, mode: str = "replace") -> str:
        self.calls.append(("restart", name))
        u = self._unit(name)
        if u is None:
            raise UnitNotFoundError(name)
        u.restarts += 1
        what = u.behaviour(u.restarts)
        u.props["InvocationID"] = bytes([u.restarts + 1]) * 16
        if what == "active":
            u.props.update(ActiveState="active", SubState="running", Result="success")
        elif what == "auto-restart":
            u.props.update(ActiveState="activating", SubState="auto-restart", Result="exit-code")
        else:
            u.props.update(ActiveState="failed", SubState="failed", Result="exit-code")
        return f"/job/{len(self.calls)}"

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]:
        self.calls.append(("pin", name))
        error: Exception | None = None
        try:
            await self.reset_failed(name)
        except SystemdError as exc:
            error = exc
        return await self.restart(name, mode), error

    async def unpin(self, name: str) -> None:
        self.calls.append(("unpin", name))

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109
        interfaces: Iterable[str] = (),
        *,
        since: Expectation | None = None,
        initial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        props = await self.unit_properties(name)
        if predicate(props):
            return props
        raise SystemdError(f"unit {name}: expected state not reached within {timeout:g}s")

    def restarted(self) -> list[str]:
        return [n for c, n in self.calls if c == "restart"]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events]


class FakeAlerter:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.targets = ("t",)

    def time_bound(self) -> float:
        return 1.0

    async def send(self, alert: Any) -> list[Any]:
        self.sent.append(alert)
        from handlers.alerts import Delivery

        return [Delivery("t", True, None, 1, 0.0)]


FAST = Recovery(
    max_attempts=5,
    window=600.0,
    min_uptime=30.0,
    stable_after=900.0,
    start_timeout=5.0,
    backoff=Backoff(base=5.0, factor=2.0, max=300.0, jitter=0.0),
)


def _engine(
    tmp_path: Path, bus: FakeBus, clock: FakeClock, **kw: Any
) -> tuple[RecoveryEngine, Sink, FakeAlerter]:
    sink = Sink()
    alerter = FakeAlerter()
    kw.setdefault("alerter_factory", lambda policy: alerter)
    engine = RecoveryEngine(
        bus,
        _paths(tmp_path),
        events=sink,
        clock=clock,
        rng=random.Random(7),
        read_journal_lines=False,
        **kw,
    )
    return engine, sink, alerter


ONFAIL = Trigger("onfailure", invocation_id="01" * 16, result="exit-code")
_MONITOR_VARS = [
    "MONITOR_SERVICE_RESULT",
    "MONITOR_EXIT_CODE",
    "MONITOR_EXIT_STATUS",
    "MONITOR_INVOCATION_ID",
    "MONITOR_UNIT",
]


@pytest.mark.asyncio
async def test_crash_recovered_with_one_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, sink, alerter = _engine(tmp_path, bus, clock, watch_uptime=True)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED
    assert out.restarts == 1 and out.attempts == 1
    # Pinned across the reset (no unload between the calls), unpinned once verified.
    assert bus.calls == [
        ("pin", "api.service"),
        ("reset_failed", "api.service"),
        ("restart", "api.service"),
        ("unpin", "api.service"),
    ]
    assert clock.sleeps == []  # the first attempt does not wait
    assert sink.kinds()[0] is EventKind.STEP_STARTED
    assert EventKind.INCIDENT_OPENED in sink.kinds() and sink.kinds()[-1] is EventKind.RECOVERED
    assert [a.status for a in alerter.sent] == ["firing", "resolved"]
    assert not out.default_policy
    hist = RecoveryEngine(bus, _paths(tmp_path), clock=clock).history("api.service")
    assert hist[0]["state"] == "recovered"
    actions = [a["action"] for a in hist[0]["attempts"]]  # type: ignore[index]
    assert "restart" in actions and "verify" in actions


@pytest.mark.asyncio
async def test_always_crashing_stops_after_exactly_max_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service", behaviour=lambda n: "failed"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, sink, alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    assert out.state is State.GAVE_UP and out.reason == "budget"
    assert bus.restarted() == ["api.service"] * 5
    assert out.attempts == 5 and out.level is Level.ALERT_AND_STOP
    # Exponential back-off between attempts, none before the first.
    assert clock.sleeps == [5.0, 10.0, 20.0, 40.0]
    # One alert per level, the last one saying it is left failed.
    levels = [a.level for a in alerter.sent]
    assert levels == [
        "restart",
        "restart-with-dependencies",
        "cleanup-then-restart",
        "alert-and-stop",
    ]
    assert "left failed" in alerter.sent[-1].summary
    escalations = [e for e in sink.events if e.kind is EventKind.ESCALATED]
    assert len(escalations) == 3
    assert sink.kinds()[-1] is EventKind.GAVE_UP
    # Another trigger (systemd fires OnFailure again, the listener reconciles): nothing.
    clock.advance(60)
    again = await engine.recover("api.service", Trigger("reconcile"))
    await engine.aclose()
    assert again.state is State.GAVE_UP and "reset" in again.reason
    assert len(bus.restarted()) == 5
    assert len(alerter.sent) == 4


@pytest.mark.asyncio
async def test_reset_rearms_and_resolves_once_healthy(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service", behaviour=lambda n: "failed")
    bus = FakeBus(unit, clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock)
    assert (await engine.recover("api.service", ONFAIL)).state is State.GAVE_UP
    # The operator fixes it and starts it, then re-arms.
    unit.props.update(ActiveState="active", SubState="running")
    out = await engine.reset("api.service")
    await engine.aclose()
    assert out.state is State.NOT_NEEDED
    assert [a.status for a in alerter.sent][-1] == "resolved"
    assert sum(a.status == "resolved" for a in alerter.sent) == 1
    status = RecoveryEngine(bus, _paths(tmp_path), clock=clock).status("api.service")[0]
    assert status["attempts_in_window"] == 0
    # Re-armed: a new failure is handled again.
    unit.props.update(ActiveState="failed", SubState="failed")
    unit.behaviour = lambda n: "active"
    engine2, _s, _a = _engine(tmp_path, bus, clock)
    again = await engine2.recover("api.service", Trigger("onfailure", invocation_id="ff" * 16))
    await engine2.aclose()
    assert again.state is State.RECOVERED and again.attempts == 1


@pytest.mark.asyncio
async def test_stands_down_while_systemd_restarts_it(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(
        FakeUnit("api.service", state="activating", sub="auto-restart", restart="on-failure"),
        clock=clock,
    )
    engine, _sink, alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", Trigger("listener"))
    await engine.aclose()
    assert out.state is State.WAITING_FOR_SYSTEMD
    assert "systemd is restarting it" in out.reason
    assert bus.restarted() == [] and alerter.sent == []
    triggers = Store.open(_paths(tmp_path).database).triggers("api.service")
    assert triggers[-1][3] == "systemd-restarting"


@pytest.mark.asyncio
async def test_failed_state_that_systemd_will_restart_is_left_to_systemd(tmp_path: Path) -> None:
    """systemd 252 broadcasts `failed` just before `auto-restart`: a snapshot taken from
    that signal, not marked settled, is settled by waiting; then the ladder stands down."""
    clock = FakeClock()
    unit = FakeUnit("api.service", restart="on-failure")
    bus = FakeBus(unit, clock=clock)

    async def wait_for(
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        unit.props.update(ActiveState="activating", SubState="auto-restart")
        assert predicate(dict(unit.props))
        return dict(unit.props)

    bus.wait_for = wait_for  # type: ignore[method-assign]
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    snapshot = dict(unit.props)
    out = await engine.recover("api.service", Trigger("listener", snapshot=snapshot))
    await engine.aclose()
    assert out.state is State.WAITING_FOR_SYSTEMD and bus.restarted() == []


@pytest.mark.asyncio
async def test_a_fresh_read_showing_failed_is_systemds_final_word(tmp_path: Path) -> None:
    """At the start limit Result keeps the crash's value, so Restart=on-failure seems to
    cover it; a read made after the failure needs no wait for an auto-restart."""
    clock = FakeClock()
    unit = FakeUnit("api.service", restart="on-failure")
    bus = FakeBus(unit, clock=clock)

    async def wait_for(
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        if predicate(dict(unit.props)):
            return dict(unit.props)
        raise AssertionError("waited for an auto-restart on a fresh read")

    bus.wait_for = wait_for  # type: ignore[method-assign]
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED
    assert bus.restarted() == ["api.service"]


@pytest.mark.asyncio
async def test_failed_dependency_is_recovered_first(tmp_path: Path) -> None:
    clock = FakeClock()
    db = FakeUnit("db.service")
    api = FakeUnit("api.service", requires=("db.service",))
    bus = FakeBus(db, api, clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED
    assert bus.restarted() == ["db.service", "api.service"]
    assert out.default_policy and any("no recovery policy" in n for n in out.notes)
    hist = RecoveryEngine(bus, _paths(tmp_path), clock=clock).history("db.service")
    assert hist[0]["source"] == "dependency"


@pytest.mark.asyncio
async def test_dependency_cycle_terminates(tmp_path: Path) -> None:
    clock = FakeClock()
    a = FakeUnit("a.service", requires=("b.service",))
    b = FakeUnit("b.service", requires=("a.service",))
    bus = FakeBus(a, b, clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await asyncio.wait_for(engine.recover("a.service", ONFAIL), 10)
    await engine.aclose()
    assert out.state is State.RECOVERED
    assert sorted(bus.restarted()) == ["a.service", "b.service"]
    assert bus.restarted()[0] == "b.service"


@pytest.mark.asyncio
async def test_dependency_that_stays_down_blocks_restart_with_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    db = FakeUnit("db.service", behaviour=lambda n: "failed")
    api = FakeUnit("api.service", requires=("db.service",))
    bus = FakeBus(db, api, clock=clock)
    paths = _paths(tmp_path)
    _write_policy(
        paths, Policy(unit="db.service", recovery=dataclasses.replace(FAST, max_attempts=2))
    )
    # "stop" as written: a Requires= dependency would make it park by default.
    stop = dataclasses.replace(FAST, after_give_up="stop")
    _write_policy(paths, Policy(unit="api.service", recovery=stop))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.GAVE_UP
    assert out.reason.startswith("dependency") and "db.service" in out.reason
    assert "api.service" not in bus.restarted()
    assert bus.restarted() == ["db.service", "db.service"]


@pytest.mark.asyncio
async def test_failing_config_validation_blocks_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("web.service"), clock=clock)
    _write_policy(
        _paths(tmp_path),
        Policy(
            unit="web.service", recovery=FAST, validate=("/bin/sh", "-c", "echo bad line 3; exit 1")
        ),
    )
    engine, _sink, alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("web.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.GAVE_UP and out.reason.startswith("config")
    assert bus.restarted() == []
    assert alerter.sent[-1].level == "alert-and-stop"


@pytest.mark.asyncio
async def test_low_disk_blocks_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    data = tmp_path / "data"
    data.mkdir()
    # 100 % free can never hold on a real filesystem: always "low".
    disk = Disk(paths=(str(data),), min_free=Threshold(percent=100.0))
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST, disk=disk))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.GAVE_UP and out.reason.startswith("disk")
    assert bus.restarted() == []


@pytest.mark.asyncio
async def test_failure_within_min_uptime_continues_the_incident(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    first = await engine.recover("api.service", ONFAIL)
    assert first.state is State.RECOVERED
    clock.advance(2.0)  # crashes 2 s later: < min_uptime (30 s)
    unit.props.update(ActiveState="failed", SubState="failed", Result="exit-code")
    second = await engine.recover("api.service", Trigger("onfailure", invocation_id="aa" * 16))
    await engine.aclose()
    assert second.incident_id == first.incident_id
    assert second.attempts == 2
    assert clock.sleeps == [pytest.approx(3.0)]  # 5 s back-off, 2 s already passed
    store = Store.open(_paths(tmp_path).database)
    restarts = [a for a in store.attempts(first.incident_id) if a.action == "restart"]
    assert [r.result for r in restarts] == ["failed", "ok"]
    assert "min_uptime" in restarts[0].reason


class RefusingOnceBus(FakeBus):
    """systemd refuses the first RestartUnit (after 0.25 s), then restarts as usual."""

    refused = False

    async def restart(self, name: str, mode: str = "replace") -> str:
        if not self.refused:
            self.refused = True
            self.calls.append(("restart", name))
            assert self.clock is not None
            self.clock.advance(0.25)
            raise SystemdError(f"unit {name}: job refused")
        return await super().restart(name, mode)


@pytest.mark.asyncio
async def test_a_refused_restart_is_one_failed_attempt_with_its_duration(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = RefusingOnceBus(FakeUnit("api.service"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED and out.attempts == 2
    store = Store.open(_paths(tmp_path).database)
    try:
        restarts = [a for a in store.attempts(out.incident_id) if a.action == "restart"]
    finally:
        store.close()
    assert [r.result for r in restarts] == ["failed", "ok"]
    assert restarts[0].reason == "restart refused: unit api.service: job refused"
    assert restarts[0].duration == pytest.approx(0.25)


@pytest.mark.asyncio
async def test_counts_decay_after_stable_period(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    rec = dataclasses.replace(FAST, stable_after=120.0)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=rec))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    for i in range(3):
        unit.props.update(ActiveState="failed", SubState="failed")
        out = await engine.recover("api.service", Trigger("onfailure", invocation_id=f"{i:032x}"))
        clock.advance(60.0)  # 60 s up: past min_uptime, not yet stable
    assert out.attempts == 3 and out.level is Level.RESTART_WITH_DEPENDENCIES
    clock.advance(200.0)  # stable for longer than stable_after: forgiven
    unit.props.update(ActiveState="failed", SubState="failed")
    out = await engine.recover("api.service", Trigger("onfailure", invocation_id="9" * 32))
    await engine.aclose()
    assert out.attempts == 1 and out.level is Level.RESTART


@pytest.mark.asyncio
async def test_counts_survive_a_new_engine(tmp_path: Path) -> None:
    """The listener is kill -9'd and restarted: the count comes from the database."""
    clock = FakeClock()
    unit = FakeUnit("api.service", behaviour=lambda n: "failed")
    bus = FakeBus(unit, clock=clock)
    _write_policy(
        _paths(tmp_path),
        Policy(unit="api.service", recovery=dataclasses.replace(FAST, max_attempts=3)),
    )
    engine, _s, _a = _engine(tmp_path, bus, clock)
    real_restart = bus.restart
    second = asyncio.Event()

    async def restart_then_hang(name: str, mode: str = "replace") -> str:
        job = await real_restart(name, mode)
        if len(bus.restarted()) == 2:
            second.set()
            await asyncio.Event().wait()  # killed right after its second RestartUnit
        return job

    bus.restart = restart_then_hang  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover("api.service", ONFAIL))
    await asyncio.wait_for(second.wait(), 5)
    task.cancel()  # dies mid-incident
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.store.close()
    bus.restart = real_restart  # type: ignore[method-assign]
    engine2, _s2, _a2 = _engine(tmp_path, bus, clock)
    out = await engine2.recover("api.service", Trigger("reconcile"))
    await engine2.aclose()
    assert out.state is State.GAVE_UP and out.reason == "budget"
    assert len(bus.restarted()) == 3  # not 2 + 3


@pytest.mark.asyncio
async def test_second_trigger_joins_in_process(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    a, b = await asyncio.gather(
        engine.recover("api.service", ONFAIL), engine.recover("api.service", Trigger("listener"))
    )
    await engine.aclose()
    assert bus.restarted() == ["api.service"]
    assert {a.joined, b.joined} == {False, True}
    assert a.incident_id == b.incident_id
    dispositions = [t[3] for t in Store.open(_paths(tmp_path).database).triggers("api.service")]
    assert "joined" in dispositions


@pytest.mark.asyncio
async def test_second_trigger_dropped_in_drop_mode(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock, lock_mode="drop")
    a, b = await asyncio.gather(
        engine.recover("api.service", ONFAIL), engine.recover("api.service", Trigger("listener"))
    )
    await engine.aclose()
    assert bus.restarted() == ["api.service"]
    assert b.dropped and not a.dropped


@pytest.mark.asyncio
async def test_joins_a_recovery_running_in_another_process(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    paths = _paths(tmp_path)
    other = UnitLock(paths.lock_dir, "api.service")  # "the OnFailure= process" holds it
    assert other.try_acquire()
    engine, _s, _a = _engine(tmp_path, bus, clock)
    task = asyncio.create_task(engine.recover("api.service", Trigger("listener")))
    await asyncio.sleep(0.1)
    assert not task.done()
    other.release()
    out = await asyncio.wait_for(task, 5)
    await engine.aclose()
    assert out.joined and bus.restarted() == []


@pytest.mark.asyncio
async def test_duplicate_invocation_is_not_handled_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    await engine.recover("api.service", ONFAIL)
    unit.props.update(ActiveState="failed")  # a stale view; same invocation reported again
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert len(bus.restarted()) == 1
    assert "already handled" in out.reason


@pytest.mark.asyncio
async def test_unknown_unit(tmp_path: Path) -> None:
    clock = FakeClock()
    engine, _s, _a = _engine(tmp_path, FakeBus(clock=clock), clock)
    with pytest.raises(UnitNotFoundError) as info:
        await engine.recover("nope.service", ONFAIL)
    await engine.aclose()
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


@pytest.mark.asyncio
async def test_health_trigger_restarts_an_active_unit(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service", state="active")
    bus = FakeBus(unit, clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", Trigger("health", reason="http 500"))
    stale = await engine.recover("api.service", Trigger("listener"))
    await engine.aclose()
    assert out.state is State.RECOVERED and out.classification == "health"
    assert stale.state is State.NOT_NEEDED
    assert bus.restarted() == ["api.service"]


@pytest.mark.asyncio
async def test_crash_after_our_start_hands_back_to_systemd(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(
        FakeUnit(
            "api.service",
            restart="on-failure",
            result="start-limit-hit",
            behaviour=lambda n: "auto-restart",
        ),
        clock=clock,
    )
    engine, _s, _a = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.WAITING_FOR_SYSTEMD and out.restarts == 1
    last = Store.open(_paths(tmp_path).database).last_incident("api.service")
    assert last is not None and last.state == "open"  # the next OnFailure= continues it


@pytest.mark.asyncio
async def test_dry_run_restarts_nothing_and_writes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock, dry_run=True)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.dry_run and out.state is State.RESTARTING
    assert bus.calls == []
    assert not _paths(tmp_path).database.exists()


@pytest.mark.asyncio
async def test_unreachable_alert_endpoint_does_not_stop_recovery(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: connection refused
    env = tmp_path / "url"
    env.write_text(f"http://127.0.0.1:{port}/hook?token=SECRET\n")
    target = {"name": "ops", "type": "webhook", "url_file": str(env), "retries": 0, "timeout": 1.0}
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST, alerts=(target,)))
    engine = RecoveryEngine(bus, _paths(tmp_path), clock=clock, read_journal_lines=False)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED
    store = Store.open(_paths(tmp_path).database)
    rows = store._query("SELECT delivered, detail FROM alerts")
    assert rows and all(r[0] == 0 for r in rows)
    assert all("SECRET" not in r[1] and "/hook" not in r[1] for r in rows)
    store.close()


@pytest.mark.asyncio
async def test_events_carry_no_secrets_and_only_primitives(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service", behaviour=lambda n: "failed"), clock=clock)
    engine, sink, _a = _engine(tmp_path, bus, clock)
    await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    for e in sink.events:
        json.dumps(dict(e.fields))
        assert all(isinstance(v, str | int | float | bool) for v in e.fields.values())


@pytest.mark.asyncio
async def test_long_lived_engine_resolves_after_min_uptime_only(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock)
    await engine.recover("api.service", ONFAIL)
    assert [a.status for a in alerter.sent] == ["firing"]  # not yet: min_uptime pending
    await asyncio.gather(*engine._deferred)  # the fake "waited" min_uptime, unit still up
    await engine.aclose()
    assert [a.status for a in alerter.sent] == ["firing", "resolved"]


@pytest.mark.asyncio
async def test_watch_uptime_continues_in_the_same_run(tmp_path: Path) -> None:
    """The OnFailure= process watches min_uptime: a quick crash is the next attempt, here."""
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    crashes = iter([True, True, False])

    async def wait_for(
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        props = dict(unit.props)
        if predicate(props):
            return props
        if next(crashes, False):
            unit.props.update(ActiveState="failed", SubState="failed")
            crashed = dict(unit.props)
            assert predicate(crashed)
            return crashed
        raise SystemdError("timeout")

    bus.wait_for = wait_for  # type: ignore[method-assign]
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock, watch_uptime=True)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED and out.restarts == 3
    assert out.level is Level.RESTART_WITH_DEPENDENCIES
    assert [a.status for a in alerter.sent] == ["firing", "firing", "resolved"]


@pytest.mark.asyncio
async def test_unreadable_policy_falls_back_to_defaults_and_says_so(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    paths = _paths(tmp_path)
    paths.policy_dir.mkdir(parents=True)
    (paths.policy_dir / "api.service.json").write_text('{"version": 99}')
    engine, _s, _a = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED and out.default_policy
    assert any("policy unreadable" in n and "version 99" in n for n in out.notes)


@given(st.dictionaries(st.sampled_from(_MONITOR_VARS), st.text(max_size=500)))
def test_trigger_from_hostile_environment_is_bounded(env: dict[str, str]) -> None:
    t = Trigger.from_environment(env)
    assert t.source == "onfailure"
    for value in (t.invocation_id, t.result, t.exit_code, t.exit_status):
        assert len(value) <= 64
    assert t.result == env.get("MONITOR_SERVICE_RESULT", "")[:64]


@pytest.mark.asyncio
async def test_hostile_unit_names_are_refused_before_anything_happens(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    for name in ("../../etc/passwd", "a/b.service", "x\n.service", ""):
        with pytest.raises(UsageError):
            await engine.recover(name, ONFAIL)
    await engine.aclose()
    assert bus.calls == []
    assert not (_paths(tmp_path).lock_dir).exists() or not any(_paths(tmp_path).lock_dir.iterdir())


@pytest.mark.asyncio
async def test_reset_while_failed_resolves_on_the_next_recovery(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service", behaviour=lambda n: "failed")
    bus = FakeBus(unit, clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock, watch_uptime=True)
    gave_up = await engine.recover("api.service", ONFAIL)
    assert gave_up.state is State.GAVE_UP
    reset = await engine.reset("api.service")  # still failed: re-armed, nothing resolved yet
    assert reset.state is State.DIAGNOSING and "re-armed" in reset.reason
    assert ("reset_failed", "api.service") in bus.calls
    assert all(a.status == "firing" for a in alerter.sent)
    unit.behaviour = lambda n: "active"  # fixed
    clock.advance(5)
    out = await engine.recover("api.service", Trigger("manual"))
    await engine.aclose()
    assert out.state is State.RECOVERED and out.incident_id != gave_up.incident_id
    resolved = [a for a in alerter.sent if a.status == "resolved"]
    assert {a.incident_id for a in resolved} == {gave_up.incident_id, out.incident_id}


@pytest.mark.asyncio
async def test_open_incident_of_a_killed_process_closes_when_seen_active(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service")
    bus = FakeBus(unit, clock=clock)
    engine, _s, _a = _engine(tmp_path, bus, clock)
    real_restart = bus.restart
    hang = asyncio.Event()

    async def restart_then_die(name: str, mode: str = "replace") -> str:
        job = await real_restart(name, mode)
        hang.set()
        await asyncio.Event().wait()
        return job

    bus.restart = restart_then_die  # type: ignore[method-assign]
    task = asyncio.create_task(engine.recover("api.service", ONFAIL))
    await asyncio.wait_for(hang.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.store.close()
    engine2, sink, _a2 = _engine(tmp_path, bus, clock)
    out = await engine2.recover("api.service", Trigger("reconcile"))
    await engine2.aclose()
    # Adopted: the dead process's restart is verified, not made again.
    assert out.state is State.RECOVERED and out.restarts == 0 and out.attempts == 1
    assert len(bus.restarted()) == 1
    last = Store.open(_paths(tmp_path).database).last_incident("api.service")
    assert last is not None and last.state == "recovered"
    assert EventKind.RECOVERED in sink.kinds()


@pytest.mark.asyncio
async def test_external_dependency_down_waits_then_gives_up_without_restart(
    tmp_path: Path,
) -> None:
    from unitgen.model import Probe

    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    probe = Probe("tcp", "127.0.0.1:1", timeout=0.2)
    stop = dataclasses.replace(FAST, after_give_up="stop")  # depends would park by default
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=stop, depends=(probe,)))
    calls: list[int] = []

    async def down(p: Probe, attempts: int) -> tuple[bool, str]:
        calls.append(attempts)
        return False, "127.0.0.1:1: connection refused"

    engine, _s, alerter = _engine(tmp_path, bus, clock, probe_runner=down)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.GAVE_UP and out.reason.startswith("dependency")
    assert "depends[0]" in out.reason
    assert bus.restarted() == []
    assert len(calls) == 2  # checked once, waited once (bounded), then stopped
    assert alerter.sent[-1].level == "alert-and-stop"


@pytest.mark.asyncio
async def test_external_dependency_back_during_the_wait_then_restart(tmp_path: Path) -> None:
    from unitgen.model import Probe

    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    _write_policy(
        _paths(tmp_path),
        Policy(unit="api.service", recovery=FAST, depends=(Probe("tcp", "127.0.0.1:6379"),)),
    )
    answers = iter([False, True, True])

    async def flaky(p: Probe, attempts: int) -> tuple[bool, str]:
        ok = next(answers)
        return ok, "127.0.0.1:6379: " + ("ok" if ok else "refused")

    engine, _s, _a = _engine(tmp_path, bus, clock, probe_runner=flaky)
    out = await engine.recover("api.service", ONFAIL)
    await engine.aclose()
    assert out.state is State.RECOVERED and bus.restarted() == ["api.service"]
    history = RecoveryEngine(bus, _paths(tmp_path), clock=clock).history("api.service")
    actions = [a["action"] for a in history[0]["attempts"]]  # type: ignore[index]
    assert actions[:4] == ["diagnose", "dependencies", "wait-dependency", "dependencies"]


@pytest.mark.asyncio
async def test_oom_kill_is_recorded_and_alerted_once(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service", result="oom-kill"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock, watch_uptime=True)
    out = await engine.recover("api.service", Trigger("onfailure", result="oom-kill"))
    await engine.aclose()
    assert out.state is State.RECOVERED and out.classification == "oom-kill"
    assert any("oom-killed" in n for n in out.notes)
    summaries = [a.summary for a in alerter.sent if a.status == "firing"]
    assert sum("OOM killer" in s for s in summaries) == 1
    assert all(a.reason == "oom-kill" for a in alerter.sent)


@pytest.mark.asyncio
async def test_cleanly_stopped_unit_is_not_restarted_by_the_listener(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service", state="inactive", result="success", sub="dead")
    bus = FakeBus(unit, clock=clock)
    engine, _s, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover("api.service", Trigger("reconcile"))
    manual = await engine.recover("api.service", Trigger("manual"))
    await engine.aclose()
    assert out.state is State.NOT_NEEDED and "did not fail" in out.reason
    assert manual.state is State.RECOVERED  # an operator asking explicitly gets a start
    assert bus.restarted() == ["api.service"]


@pytest.mark.asyncio
async def test_status_reports_failure_reason_mttr_and_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    unit = FakeUnit("api.service", behaviour=lambda n: "failed")
    bus = FakeBus(unit, clock=clock)
    rec = dataclasses.replace(FAST, max_attempts=2)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=rec))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    await engine.recover("api.service", ONFAIL)
    row = engine.status("api.service")[0]
    await engine.aclose()
    assert row["last_failure_reason"] == "exit-code; gave up: budget"
    assert row["attempts_in_window"] == 2 and row["max_attempts"] == 2
    assert str(row["state"]).startswith("gave-up") and row["success_rate"] == 0.0
    assert row["mttr"] is None  # nothing recovered yet


def test_disk_cleanup_only_touches_directories_on_the_full_filesystem(tmp_path: Path) -> None:
    from handlers.recovery import _on_same_filesystem

    here = tmp_path / "logs"
    here.mkdir()
    missing = tmp_path / "not-created-yet" / "state"
    # /proc is never on the same filesystem as a temporary directory.
    roots = [str(here), "/proc/sys"]
    assert _on_same_filesystem(roots, [str(missing)]) == [str(here)]
    assert _on_same_filesystem(roots, ["/proc/self"]) == ["/proc/sys"]
    assert _on_same_filesystem(roots, []) == []


@pytest.mark.asyncio
async def test_a_trigger_after_the_give_up_publishes_nothing(tmp_path: Path) -> None:
    """The OnFailure= hand-off often arrives after the listener's ladder gave up."""
    clock = FakeClock()
    unit = FakeUnit("api.service", behaviour=lambda n: "failed", restart="on-failure")
    bus = FakeBus(unit, clock=clock)
    rec = dataclasses.replace(FAST, max_attempts=2)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=rec))
    engine, sink, _a = _engine(tmp_path, bus, clock)
    first = await engine.recover("api.service", Trigger("listener"))
    assert first.state is State.GAVE_UP and sink.kinds()[-1] is EventKind.GAVE_UP
    published = len(sink.events)
    second = await engine.recover("api.service", Trigger("manual"))
    await engine.aclose()
    assert second.state is State.GAVE_UP and "given up earlier" in second.reason
    assert len(sink.events) == published
    assert bus.restarted() == ["api.service", "api.service"]  # none by the second trigger
    dispositions = [t[3] for t in Store.open(_paths(tmp_path).database).triggers("api.service")]
    assert dispositions[-1] == "ignored-given-up"


@pytest.mark.asyncio
async def test_instances_share_the_template_policy_until_it_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    names = [f"w@{i}.service" for i in range(3)]
    bus = FakeBus(*(FakeUnit(n) for n in names), clock=clock)
    paths = _paths(tmp_path)
    _write_policy(paths, Policy(unit="w@.service", recovery=FAST))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    first = engine._policy(names[0], [])
    second = engine._policy(names[1], [])
    assert (first.unit, second.unit) == (names[0], names[1])  # each keeps its own name
    assert first.recovery.max_attempts == second.recovery.max_attempts == 5
    # The template is rewritten: the next instance (and the cached ones) see it.
    slower = dataclasses.replace(FAST, max_attempts=2)
    text = (paths.policy_dir / "w@.service.json").read_text()
    _write_policy(paths, Policy(unit="w@.service", recovery=slower))
    assert (paths.policy_dir / "w@.service.json").read_text() != text
    assert engine._policy(names[2], []).recovery.max_attempts == 2
    assert engine._policy(names[0], []).recovery.max_attempts == 2
    # An instance with a file of its own uses that one, not the template's.
    _write_policy(paths, Policy(unit=names[1], recovery=dataclasses.replace(FAST, max_attempts=9)))
    assert engine._policy(names[1], []).recovery.max_attempts == 9
    await engine.aclose()


@pytest.mark.asyncio
async def test_listener_snapshot_replaces_the_diagnosis_read(tmp_path: Path) -> None:
    """A trigger with the listener's snapshot: no read, no settle wait, same outcome."""
    clock = FakeClock()
    unit = FakeUnit("api.service", result="signal", restart="on-failure")
    bus = FakeBus(unit, clock=clock)
    original = bus.unit_properties

    async def counted(name: str) -> dict[str, Any]:
        bus.calls.append(("read", name))  # settle() and verify read through here too
        return await original(name)

    bus.unit_properties = counted  # type: ignore[method-assign]
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    snapshot = {k: v for k, v in unit.props.items() if k != "ControlGroup"}
    trigger = Trigger("listener", invocation_id="01" * 16, snapshot=snapshot, settled=True)
    out = await engine.recover("api.service", trigger)
    await engine.aclose()
    assert out.state is State.RECOVERED and out.restarts == 1
    # Nothing read before the restart: neither a diagnosis read nor settle(), which
    # Restart=on-failure + Result=signal would otherwise make wait for systemd.
    assert bus.calls[:3] == [
        ("pin", "api.service"),
        ("reset_failed", "api.service"),
        ("restart", "api.service"),
    ]
    assert ("read", "api.service") in bus.calls[2:]  # verify still reads
    # Without the snapshot the same failure is read first.
    bus.calls.clear()
    unit.props.update(ActiveState="failed", SubState="failed", InvocationID=b"\x09" * 16)
    engine2, _sink, _alerter = _engine(tmp_path, bus, clock)
    await engine2.recover("api.service", Trigger("listener", invocation_id="09" * 16))
    await engine2.aclose()
    assert bus.calls[0] == ("read", "api.service")


@pytest.mark.asyncio
async def test_history_is_checkpointed_after_a_run_in_a_thread(tmp_path: Path) -> None:
    from handlers.store import CHECKPOINT_COMMITS

    clock = FakeClock()
    bus = FakeBus(FakeUnit("api.service"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=FAST))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    database = _paths(tmp_path).database
    size = database.stat().st_size
    engine.store.commits = CHECKPOINT_COMMITS - 1  # the run's own writes tip it over
    out = await engine.recover("api.service", ONFAIL)
    assert out.state is State.RECOVERED
    checkpoint = engine._checkpointing
    assert checkpoint is not None and engine.store.commits == 0
    await engine.aclose()
    assert checkpoint.done() and database.stat().st_size > size


async def _level_two_run(tmp_path: Path, *, other_state: str) -> tuple[FakeBus, list[Any]]:
    """api.service Requires= db.service, and so does web.service (in ``other_state``);
    api's third restart in the window is at restart-with-dependencies."""
    clock = FakeClock()
    api = FakeUnit("api.service", requires=("db.service",))
    db = FakeUnit("db.service", state="active")
    db.props["RequiredBy"] = ["api.service", "web.service"]
    db.props["BoundBy"] = []
    web = FakeUnit("web.service", state=other_state)
    bus = FakeBus(api, db, web, clock=clock)
    rec = dataclasses.replace(FAST, max_attempts=3, min_uptime=0.0)
    _write_policy(_paths(tmp_path), Policy(unit="api.service", recovery=rec))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = None
    for i in range(2):
        api.props.update(ActiveState="failed", SubState="failed")
        out = await engine.recover("api.service", Trigger("onfailure", invocation_id=f"{i:032x}"))
        clock.advance(60.0)
    assert out is not None and out.level is Level.RESTART_WITH_DEPENDENCIES
    store = engine.store
    rows = [a for inc in store.incidents("api.service", 5) for a in store.attempts(inc.id)]
    await engine.aclose()
    return bus, [r for r in rows if r.action == "restart-dependency"]


@pytest.mark.asyncio
async def test_level_two_does_not_restart_a_dependency_other_active_units_need(
    tmp_path: Path,
) -> None:
    bus, rows = await _level_two_run(tmp_path, other_state="active")
    assert ("restart", "db.service") not in bus.calls  # web.service would go down with it
    assert [(r.result, r.reason) for r in rows] == [
        ("skipped", "db.service: also needed by web.service")
    ]


@pytest.mark.asyncio
async def test_level_two_restarts_a_dependency_no_other_active_unit_needs(tmp_path: Path) -> None:
    bus, rows = await _level_two_run(tmp_path, other_state="failed")
    assert ("restart", "db.service") in bus.calls
    assert [(r.result, r.reason) for r in rows] == [("started", "db.service")]
