"""Incident groups: the correlator's rules (pure) and the engine with a fake systemd.

The sandbox proof (200 dependents of one real failing service) is
tests/test_correlation_sandbox.py; these pin the decisions fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from clocks import FakeClock
from hypothesis import given
from hypothesis import strategies as st
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy
from test_recovery import FAST, FakeBus, FakeUnit, _engine

from handlers.correlation import (
    COVERED_FOR,
    GAVE_UP,
    RECOVERED,
    WAITING,
    Cause,
    Correlator,
    RestartRate,
)
from handlers.events import EventKind
from handlers.ladder import State
from handlers.recovery import Trigger
from unitgen.policy import Policy

DB = Cause("dependency", "db.service", "db.service")


def listener(unit: str) -> Trigger:
    return Trigger("listener", invocation_id=f"{abs(hash(unit)):032x}", result="exit-code")


# --- the correlator ---------------------------------------------------------------------


def test_a_lone_failure_opens_no_group_and_is_not_busy() -> None:
    clock = FakeClock()
    c = Correlator(clock)
    assert c.began("api.service") is None
    assert not c.busy("api.service")
    assert c.group_of("api.service") is None
    c.finish("api.service", RECOVERED)
    clock.advance(c.linger)
    assert [g.announced for g in c.close_due()] == [False]
    assert not c.covered("api.service")


def test_dependents_and_their_failing_dependency_are_one_group() -> None:
    clock = FakeClock()
    c = Correlator(clock, prefix="t")
    c.began("db.service")
    c.began("a.service")
    assert c.busy("a.service")
    group, announced = c.join("a.service", DB)
    # the dependency's own failure and one dependent: two units, one cause
    assert announced and group.units() == ["db.service", "a.service"]
    c.began("b.service")
    again, announced = c.join("b.service", DB)
    assert again is group and not announced
    assert c.group_of("db.service") is group and c.group_of("b.service") is group
    c.finish("db.service", RECOVERED)
    c.finish("a.service", RECOVERED)
    assert group not in c.close_due()  # b still running
    assert group in c.finish("b.service", RECOVERED)
    assert group not in c.close_due()  # quiet for the window first: late members may join
    assert c.pending_close()
    clock.advance(c.linger)
    assert [g for g in c.close_due() if g.announced] == [group] and group.recovered
    assert c.covered("b.service")
    clock.advance(COVERED_FOR)
    assert not c.covered("b.service")


def test_one_dependent_of_a_unit_nobody_recovers_is_no_group() -> None:
    c = Correlator(FakeClock())
    c.began("a.service")
    _group, announced = c.join("a.service", Cause("dependency", "nfs.mount", "nfs.mount"))
    assert not announced and c.group_of("a.service") is None


def test_a_stronger_cause_moves_a_unit_until_its_group_is_announced() -> None:
    c = Correlator(FakeClock())
    status = Cause("exit-status", "w@.service status 3")
    for u in ("w@1.service", "w@2.service"):
        c.began(u)
    first, _ = c.join("w@1.service", status)
    moved, announced = c.join("w@1.service", DB)
    assert moved is not first and not announced
    weaker, _ = c.join("w@1.service", status)
    assert weaker is moved  # the dependency stays its cause


def test_outcomes_are_counted_and_the_group_says_who_waits() -> None:
    clock = FakeClock()
    c = Correlator(clock)
    for u in ("db.service", "a.service", "b.service"):
        c.began(u)
    group, _ = c.join("a.service", DB)
    c.join("b.service", DB)
    c.finish("db.service", GAVE_UP)
    c.finish("a.service", WAITING)
    c.finish("b.service", WAITING)
    clock.advance(c.linger)
    assert [g for g in c.close_due() if g.announced] == [group]
    assert not group.recovered
    assert group.with_outcome(GAVE_UP) == ["db.service"]
    assert group.with_outcome(WAITING) == ["a.service", "b.service"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["join", "fin", "tick"])),
        max_size=60,
    )
)
def test_any_sequence_closes_every_group_once_all_runs_end(ops: list[tuple[str, str]]) -> None:
    clock = FakeClock()
    c = Correlator(clock)
    running: dict[str, int] = {}
    closed: list[str] = []
    for name, op in ops:
        unit = f"{name}.service"
        if op == "join":
            c.began(unit)
            running[unit] = running.get(unit, 0) + 1
            c.join(unit, DB)
        elif op == "fin" and running.get(unit):
            running[unit] -= 1
            c.finish(unit, RECOVERED)
        else:
            clock.advance(c.linger)
            closed += [g.id for g in c.close_due()]
    for unit, n in running.items():
        for _ in range(n):
            c.finish(unit, RECOVERED)
    clock.advance(c.linger)
    closed += [g.id for g in c.close_due()]
    assert len(closed) == len(set(closed))
    assert c.open_groups() == []


def test_restart_rate_allows_one_seconds_worth_then_spaces_them() -> None:
    clock = FakeClock()
    rate = RestartRate(10, clock)
    delays = [rate.delay() for _ in range(30)]
    assert delays[:10] == [0.0] * 10
    assert delays[10:20] == pytest.approx([1.0] * 10)
    assert delays[20:] == pytest.approx([2.0] * 10)
    assert RestartRate(0, clock).delay() == 0.0


@given(st.integers(1, 50), st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_restart_rate_never_exceeds_its_limit_in_any_second(
    per_second: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    rate = RestartRate(per_second, clock)
    starts: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        starts.append(clock.monotonic() + rate.delay())
    starts.sort()
    for i, t in enumerate(starts):
        within = [s for s in starts[i:] if s < t + 1.0 - 1e-9]
        assert len(within) <= per_second


# --- the engine -------------------------------------------------------------------------


def _group_alerts(alerter: Any) -> list[Any]:
    return [a for a in alerter.sent if a.level == "group"]


async def _all(engine: Any, units: list[str]) -> list[Any]:
    return list(await asyncio.gather(*(engine.recover(u, listener(u)) for u in units)))


@pytest.mark.asyncio
async def test_dependents_wait_for_their_dependency_and_alert_once(tmp_path: Path) -> None:
    clock = WindowClock()
    names = [f"app{i}.service" for i in range(20)]
    db = FakeUnit("db.service")
    apps = [FakeUnit(n, requires=("db.service",)) for n in names]
    bus = RoundTrips(db, *apps, clock=clock)
    engine, sink, alerter = _engine(tmp_path, bus, clock, correlate=True, group_restarts=4)
    outcomes = await _all(engine, ["db.service", *names])
    # the history shows the group
    app3 = engine.history("app3.service")[0]
    status = {row["unit"]: row for row in engine.status()}
    db_history = engine.history("db.service")[0]
    await engine.aclose()
    assert "dependency db.service" in str(app3["group"])
    assert str(status["app3.service"]["group"]) == app3["group"]
    assert str(status["db.service"]["group"]) == app3["group"] == db_history["group"]
    assert all(o.state is State.RECOVERED for o in outcomes)
    restarted = bus.restarted()
    # the cause first, once; then every dependent once
    assert restarted[0] == "db.service" and restarted.count("db.service") == 1
    assert sorted(restarted[1:]) == sorted(names)
    opened = [e for e in sink.events if e.kind is EventKind.GROUP_OPENED]
    closed = [e for e in sink.events if e.kind is EventKind.GROUP_CLOSED]
    assert len(opened) == 1 and len(closed) == 1
    assert opened[0].unit == "db.service" and closed[0].fields["state"] == "recovered"
    assert closed[0].fields["member_count"] == 21
    # one alert for the group (and its resolution); no unit's own alert
    group = _group_alerts(alerter)
    assert [a.status for a in group] == ["firing", "resolved"]
    assert group[0].members[0] == "db.service" and set(group[0].members[1:]) == set(names)
    assert group[0].labels["cause"] == "dependency db.service"
    assert [a for a in alerter.sent if a.level != "group"] == []
    # the per-unit events still flow
    recovered = {e.unit for e in sink.events if e.kind is EventKind.RECOVERED}
    assert recovered == {"db.service", *names}


@pytest.mark.asyncio
async def test_a_lone_failure_behaves_as_without_grouping(tmp_path: Path) -> None:
    runs = []
    for correlate in (False, True):
        clock = FakeClock()
        bus = FakeBus(FakeUnit("api.service"), clock=clock)
        engine, sink, alerter = _engine(tmp_path / str(correlate), bus, clock, correlate=correlate)
        out = await engine.recover("api.service", listener("api.service"))
        await engine.aclose()
        runs.append(
            (
                out.state,
                bus.calls,
                clock.sleeps,
                [e.kind for e in sink.events],
                [(a.status, a.level, a.summary) for a in alerter.sent],
            )
        )
    assert runs[0] == runs[1]


@pytest.mark.asyncio
async def test_dependents_of_a_dependency_that_gives_up_wait_unrestarted(
    tmp_path: Path,
) -> None:
    clock = WindowClock()
    names = [f"app{i}.service" for i in range(5)]
    db = FakeUnit("db.service", behaviour=lambda n: "failed")
    bus = RoundTrips(db, *[FakeUnit(n, requires=("db.service",)) for n in names], clock=clock)
    paths = _paths(tmp_path)
    _write_policy(
        paths, Policy(unit="db.service", recovery=dataclasses.replace(FAST, max_attempts=2))
    )
    engine, sink, alerter = _engine(tmp_path, bus, clock, correlate=True)
    outcomes = await _all(engine, ["db.service", *names])
    await engine.aclose()
    assert bus.restarted() == ["db.service", "db.service"]  # dependents: none
    for out in outcomes[1:]:
        # Parked on db.service (the default once a dependency is down), not restarted.
        assert out.state is State.PARKED and "db.service" in out.reason
    assert all(s < 30 for s in clock.sleeps)  # no dependency wait of 30 s each
    closed = [e for e in sink.events if e.kind is EventKind.GROUP_CLOSED]
    assert closed[0].fields["waiting"] == 5 and closed[0].fields["gave_up"] == 1
    group = _group_alerts(alerter)
    assert [a.status for a in group] == ["firing", "firing"]
    assert "waiting for db.service, not restarted" in group[1].summary
    assert [a for a in alerter.sent if a.level != "group"] == []


class RoundTrips(FakeBus):
    """Calls to systemd yield, as a round trip does: other runs go on meanwhile."""

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]:
        await asyncio.sleep(0)
        return await super().reset_and_restart(name, mode)

    async def list_units(self, patterns: Any = (), states: Any = ()) -> Any:
        await asyncio.sleep(0)
        return await super().list_units(patterns, states)


class BringsDependentsBack(RoundTrips):
    """Restarting the dependency brings ``back`` up too (socket activation, Restart=)."""

    def __init__(self, *units: FakeUnit, back: set[str], clock: FakeClock) -> None:
        super().__init__(*units, clock=clock)
        self.back = back

    async def restart(self, name: str, mode: str = "replace") -> str:
        job = await super().restart(name, mode)
        if name == "db.service":
            for unit in self.back:
                self.units[unit].props.update(ActiveState="active", SubState="running")
        return job


@pytest.mark.asyncio
async def test_a_dependent_back_with_its_dependency_is_not_restarted_again(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    units = [FakeUnit("db.service")] + [
        FakeUnit(n, requires=("db.service",)) for n in ("a.service", "b.service")
    ]
    bus = BringsDependentsBack(*units, back={"a.service"}, clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock, correlate=True)
    outcomes = await _all(engine, ["a.service", "b.service"])
    await engine.aclose()
    assert bus.restarted() == ["db.service", "b.service"]
    assert outcomes[0].state is State.RECOVERED and outcomes[0].restarts == 0
    assert "came back with its dependency" in outcomes[0].reason or outcomes[0].restarts == 0


class SlowVerify(RoundTrips):
    """Units take a while to come up: restarts overlap, so in-flight counts are real."""

    def __init__(self, *units: FakeUnit, clock: FakeClock) -> None:
        super().__init__(*units, clock=clock)
        self.starting: set[str] = set()  # restarted, not yet seen up by verify
        self.most = 0
        self.db_active_at = -1  # restarts made before the database was active

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]:
        if name != "db.service":
            self.starting.add(name)
            self.most = max(self.most, len(self.starting))
        return await super().reset_and_restart(name, mode)

    async def restart(self, name: str, mode: str = "replace") -> str:
        job = await super().restart(name, mode)
        if name == "db.service":  # the database takes its time to come up
            self.units[name].props.update(ActiveState="activating", SubState="start")
        return job

    async def wait_for(self, name: str, predicate: Any, timeout: float, *a: Any, **kw: Any) -> Any:  # noqa: ASYNC109
        await asyncio.sleep(0.05 if name == "db.service" else 0.005)
        if name == "db.service" and self.db_active_at < 0:
            self.units[name].props.update(ActiveState="active", SubState="running")
            self.db_active_at = len(self.restarted())
        try:
            return await super().wait_for(name, predicate, timeout, *a, **kw)
        finally:
            self.starting.discard(name)


class WindowClock(FakeClock):
    """Sleeps advance the fake time and also yield for real, so a window lets others run."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        await asyncio.sleep(0.02 if seconds > 0 else 0)


@pytest.mark.asyncio
async def test_a_groups_restarts_in_flight_are_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    names = [f"app{i}.service" for i in range(12)]
    units = [FakeUnit("db.service")] + [FakeUnit(n, requires=("db.service",)) for n in names]
    bus = SlowVerify(*units, clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock, correlate=True, group_restarts=3)
    await _all(engine, ["db.service", *names])
    await engine.aclose()
    assert bus.most == 3
    assert bus.restarted()[: bus.db_active_at] == ["db.service"]
    assert sorted(bus.restarted()) == sorted(["db.service", *names])


@pytest.mark.asyncio
async def test_an_unrelated_failure_is_not_held_behind_a_group(tmp_path: Path) -> None:
    clock = FakeClock()
    names = [f"app{i}.service" for i in range(6)]
    units = [FakeUnit("db.service"), FakeUnit("other.service")] + [
        FakeUnit(n, requires=("db.service",)) for n in names
    ]
    bus = SlowVerify(*units, clock=clock)
    engine, sink, alerter = _engine(tmp_path, bus, clock, correlate=True)
    await _all(engine, ["db.service", *names, "other.service"])
    await engine.aclose()
    restarted = bus.restarted()
    # other.service went while db.service was still coming up; its dependents after
    assert restarted[: bus.db_active_at] == ["db.service", "other.service"]
    assert sorted(restarted[bus.db_active_at :]) == sorted(names)
    opened = [e for e in sink.events if e.kind is EventKind.GROUP_OPENED]
    assert "other.service" not in str(opened[0].fields["members"])
    own = [a for a in alerter.sent if a.level != "group"]
    assert [a.unit for a in own] == ["other.service"]


@pytest.mark.asyncio
async def test_a_dependency_cycle_is_reported_and_terminates(tmp_path: Path) -> None:
    clock = FakeClock()
    a = FakeUnit("a.service", requires=("b.service",))
    b = FakeUnit("b.service", requires=("a.service",))
    bus = FakeBus(a, b, clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock, correlate=True)
    out = await asyncio.wait_for(engine.recover("a.service", listener("a.service")), 10)
    history = engine.history("b.service")[0]["attempts"]
    await engine.aclose()
    assert out.state is State.RECOVERED
    assert sorted(bus.restarted()) == ["a.service", "b.service"]
    assert any(s["action"] == "dependency-cycle" for s in history)


@pytest.mark.asyncio
async def test_the_host_wide_rate_spaces_ladder_restarts(tmp_path: Path) -> None:
    clock = FakeClock()
    names = [f"u{i}.service" for i in range(8)]
    bus = FakeBus(*[FakeUnit(n) for n in names], clock=clock)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock, max_restarts_per_second=4)
    await _all(engine, names)
    await engine.aclose()
    assert len(bus.restarted()) == 8
    # four at once, the next four a second later (the fake clock's sleeps add up)
    assert sum(s for s in clock.sleeps if s > 0) == pytest.approx(1.0)


# --- [defaults] max_restarts_per_second -------------------------------------------------

SERVICE = '[service.a]\nexec = ["/bin/true"]\n'


def test_the_host_wide_rate_is_rendered_beside_the_policies_and_read_back(
    tmp_path: Path,
) -> None:
    from unitgen.policy import HOST_POLICY, load_host_restart_rate
    from unitgen.render import render_host_policy
    from unitgen.specfile import parse_spec

    spec = parse_spec(f"[defaults]\nmax_restarts_per_second = 25\n{SERVICE}", "s.toml")
    files = render_host_policy(spec)
    assert list(files) == [HOST_POLICY] and not HOST_POLICY.endswith(".json")
    (tmp_path / HOST_POLICY).write_text(files[HOST_POLICY])
    assert load_host_restart_rate(tmp_path) == 25.0
    assert render_host_policy(parse_spec(SERVICE, "s.toml")) == {}  # the default: nothing
    assert load_host_restart_rate(tmp_path / "absent") == 0.0


@pytest.mark.parametrize("value", ["-1", '"fast"', "1.5", "true", "100001"])
def test_a_bad_host_wide_rate_in_the_spec_is_one_line(value: str) -> None:
    from unitgen.errors import SpecError
    from unitgen.specfile import parse_spec

    with pytest.raises(SpecError) as err:
        parse_spec(f"[defaults]\nmax_restarts_per_second = {value}\n{SERVICE}", "s.toml")
    (line,) = str(err.value).strip().splitlines()
    assert line.startswith("s.toml: defaults.max_restarts_per_second: expected")


@given(st.binary(max_size=200))
def test_a_hostile_host_policy_file_is_refused_in_one_line(data: bytes) -> None:
    import tempfile

    from unitgen.errors import PolicyError
    from unitgen.policy import HOST_POLICY, load_host_restart_rate

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / HOST_POLICY).write_bytes(data)
        try:
            rate = load_host_restart_rate(Path(d))
        except PolicyError as exc:
            assert HOST_POLICY in str(exc) and "\n" not in str(exc)
        else:
            assert rate >= 0


@pytest.mark.parametrize(
    "text", ['{"max_restarts_per_second": NaN}', '{"max_restarts_per_second": -1}', "[]", "{"]
)
def test_a_host_policy_with_a_bad_value_is_refused(tmp_path: Path, text: str) -> None:
    from unitgen.errors import PolicyError
    from unitgen.policy import HOST_POLICY, load_host_restart_rate

    (tmp_path / HOST_POLICY).write_text(text)
    with pytest.raises(PolicyError, match=HOST_POLICY):
        load_host_restart_rate(tmp_path)


# --- the other causes, and the payloads of every alert type -----------------------------


@pytest.mark.asyncio
async def test_units_failing_one_validate_command_are_one_group(tmp_path: Path) -> None:
    clock = WindowClock()
    names = ["a.service", "b.service", "c.service"]
    bus = RoundTrips(*[FakeUnit(n) for n in names], clock=clock)
    check = ("/bin/sh", "-c", "echo shared.conf: bad line 3; exit 1")
    for name in names:
        _write_policy(_paths(tmp_path), Policy(unit=name, recovery=FAST, validate=check))
    engine, sink, alerter = _engine(tmp_path, bus, clock, correlate=True)
    outcomes = await _all(engine, names)
    await engine.aclose()
    assert all(o.state is State.GAVE_UP and o.reason.startswith("config") for o in outcomes)
    assert bus.restarted() == []
    (opened,) = [e for e in sink.events if e.kind is EventKind.GROUP_OPENED]
    (closed,) = [e for e in sink.events if e.kind is EventKind.GROUP_CLOSED]
    assert opened.fields["cause_kind"] == "config" and opened.fields["member_count"] >= 2
    assert closed.fields["member_count"] == 3 and closed.fields["gave_up"] == 3
    group = _group_alerts(alerter)
    assert [a.status for a in group] == ["firing", "firing"]
    assert "gave up: a.service, b.service, c.service" in group[1].summary
    assert [a for a in alerter.sent if a.level != "group"] == []


@pytest.mark.asyncio
async def test_instances_of_a_template_failing_with_one_exit_status_are_one_group(
    tmp_path: Path,
) -> None:
    clock = WindowClock()
    names = [f"w@{i}.service" for i in range(4)]
    bus = RoundTrips(*[FakeUnit(n) for n in names], clock=clock)
    engine, sink, alerter = _engine(tmp_path, bus, clock, correlate=True)
    await _all(engine, names)
    await engine.aclose()
    assert sorted(bus.restarted()) == names  # grouping changes no restart
    opened = [e for e in sink.events if e.kind is EventKind.GROUP_OPENED]
    assert [e.fields["cause"] for e in opened] == ["exit-status w@.service status 1"]
    group = _group_alerts(alerter)
    assert [a.status for a in group] == ["firing", "resolved"]
    assert set(group[0].members) == set(names)


def test_a_group_alert_names_cause_and_members_in_every_payload() -> None:
    from handlers.alertmodel import Alert, AlertTarget
    from handlers.alertpayloads import (
        alertmanager_payload,
        command_env,
        email_message,
        slack_payload,
        webhook_payload,
    )

    members = ("db.service", *(f"app@{i}.service" for i in range(30)))
    alert = Alert(
        unit="db.service",
        incident_id="g1-1",
        level="group",
        status="firing",
        reason="dependency",
        summary="db.service is down and 30 unit(s) that need it failed with it: app@0.service",
        attempts=31,
        started_at=1.7e9,
        ended_at=None,
        host="node1",
        labels={"group": "g1-1", "cause": "dependency db.service", "cause_kind": "dependency"},
        members=members,
    )
    hook = webhook_payload(alert)
    assert hook["members"] == list(members) and hook["labels"]["cause"] == "dependency db.service"
    (am,) = alertmanager_payload(alert)
    assert am["labels"]["group"] == "g1-1" and am["labels"]["cause_kind"] == "dependency"
    assert am["annotations"]["members"].split() == list(members)
    assert "db.service is down" in slack_payload(alert)["text"]
    env = command_env(alert, "hook")
    assert json.loads(env["UNITGEN_ALERT"])["members"] == list(members)
    target = AlertTarget.from_mapping(
        {
            "name": "mail",
            "type": "email",
            "smtp_host": "127.0.0.1",
            "from": "unitgen@example.org",
            "to": ["ops@example.org"],
        }
    )
    body = email_message(alert, target).get_body()
    assert body is not None and "db.service is down" in body.get_content()
    # a unit's own alert has no members key: its payloads are as before
    own = dataclasses.replace(alert, members=(), level="restart")
    assert "members" not in webhook_payload(own)
    assert "members" not in alertmanager_payload(own)[0]["annotations"]
