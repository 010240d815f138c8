"""Parking instead of a final give-up: the pure parts, the registry, and the engine
against the instant fake systemd (tests/test_recovery.py). The proof on a real
manager is tests/test_parking_sandbox.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from clocks import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy
from test_recovery import FAST, ONFAIL, FakeBus, FakeUnit, _engine
from test_spec import SRC, only_problem, with_service

from handlers import parking
from handlers.ladder import GiveUp, State, Transition, after_give_up_mode, park_instead
from handlers.ledger import Ledger, ParkMark
from handlers.parking import Cue, ParkedUnit, Parking, Phase
from handlers.recovery import Trigger
from handlers.store import Stamp
from unitgen.model import Health, Probe
from unitgen.policy import Policy
from unitgen.specfile import parse_spec

API, DB = "api.service", "db.service"


def _resume(why: str) -> Trigger:
    return Trigger("parked", reason=why)


# --- the pure parts ---------------------------------------------------------------------


def test_only_parkable_give_ups_park_and_only_when_the_mode_says_so() -> None:
    for why in GiveUp:
        t = Transition(State.GAVE_UP, why, attempt_failed=True)
        parked = park_instead(t, "park")
        if why in (GiveUp.DEPENDENCY, GiveUp.DISK, GiveUp.BUDGET, GiveUp.CONFIG):
            assert parked == Transition(State.PARKED, why, attempt_failed=True)
        else:
            assert parked is t  # nothing to wait for: an earlier stop, no unit, no count
        assert park_instead(t, "stop") is t
    ok = Transition(State.RECOVERED)
    assert park_instead(ok, "park") is ok


def test_the_default_parks_units_with_something_to_wait_for() -> None:
    assert after_give_up_mode(None, has_dependency=False, has_probe=False) == "stop"
    assert after_give_up_mode(None, has_dependency=True, has_probe=False) == "park"
    assert after_give_up_mode(None, has_dependency=False, has_probe=True) == "park"
    assert after_give_up_mode("stop", has_dependency=True, has_probe=True) == "stop"
    assert after_give_up_mode("park", has_dependency=False, has_probe=False) == "park"


def test_what_a_parked_unit_waits_for() -> None:
    waits = parking.waits_for(GiveUp.DEPENDENCY, (DB, "depends[0]"), has_health=True)
    assert waits == (DB, "depends[0]")
    assert parking.units_of(waits) == (DB,)
    assert parking.checks_of(waits) == ("depends[0]",)
    probe = Probe("tcp", "127.0.0.1:5432")
    assert parking.describe(waits, (probe,)) == "db.service, tcp 127.0.0.1:5432"
    assert parking.waits_for(GiveUp.DISK, (), has_health=False) == (parking.DISK,)
    assert parking.waits_for(GiveUp.BUDGET, (), has_health=True) == (parking.HEALTH,)
    assert parking.waits_for(GiveUp.BUDGET, (), has_health=False) == ()
    assert parking.describe(()) == "the next retry"
    assert parking.describe(("depends[7]",)) == "depends[7]"  # no such probe: shown as is


def test_lifecycle_every_phase_reachable_and_released_only_by_an_end() -> None:
    seen = {Phase.PARKED}
    frontier = [Phase.PARKED]
    while frontier:
        p = frontier.pop()
        for (src, _cue), dst in parking.TRANSITIONS.items():
            if src is p and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(Phase)
    for (src, cue), dst in parking.TRANSITIONS.items():
        assert (dst is Phase.RELEASED) == (cue is Cue.ENDED), (src, cue)
    # A parked unit reacts to every cue; nothing resumes it twice at once.
    assert {c for (s, c) in parking.TRANSITIONS if s is Phase.PARKED} == set(Cue)
    assert parking.step(Phase.RESUMING, Cue.DEPENDENCY_ACTIVE) is Phase.RESUMING
    with pytest.raises(parking.InvalidParkingError):
        parking.step(Phase.RELEASED, Cue.TIMER)


def test_schedule_retry_reminder_and_checks() -> None:
    kw: dict[str, Any] = {"since": 0.0, "reminded": 0}
    assert parking.next_wake(now=10.0, at=0.0, interval=600.0, checked=None, **kw) == 590.0
    assert parking.next_wake(now=10.0, at=0.0, interval=600.0, checked=5.0, **kw) == 25.0
    # A short interval bounds the check cadence too.
    assert parking.next_wake(now=0.0, at=0.0, interval=5.0, checked=0.0, **kw) == 5.0
    late = parking.next_wake(
        now=parking.DAY - 1, at=parking.DAY - 1, since=0.0, interval=600.0, reminded=0, checked=None
    )
    assert late == 1.0  # the first day's reminder comes before the retry
    assert parking.reminder_day(0.0, 2.5 * parking.DAY) == 2
    assert parking.next_wake(now=700.0, at=0.0, interval=600.0, checked=None, **kw) == 0.0


# --- the registry -------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.resumed: list[tuple[str, Cue, str]] = []
        self.reminded: list[tuple[str, int]] = []
        self.checks: list[tuple[str, tuple[str, ...]]] = []
        self.check_ok = False

    def resume(self, unit: str, cue: Cue, detail: str) -> None:
        self.resumed.append((unit, cue, detail))

    def remind(self, unit: str, day: int) -> None:
        self.reminded.append((unit, day))

    async def check(self, unit: str, checks: tuple[str, ...]) -> tuple[bool, str]:
        self.checks.append((unit, checks))
        return self.check_ok, "probe passed" if self.check_ok else "still down"


class _GateClock(FakeClock):
    """Sleeps only as far as the test lets time go: ``await clock.run_until(t)``."""

    def __init__(self) -> None:
        super().__init__()
        self._moved = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        until = self.mono + seconds
        while self.mono < until:
            self._moved.clear()
            await self._moved.wait()

    async def run_until(self, mono: float) -> None:
        while self.mono < mono:
            await asyncio.sleep(0)
            self.advance(min(1.0, mono - self.mono))
            self._moved.set()
            for _ in range(20):  # let every woken task run to its next wait
                await asyncio.sleep(0)


def _info(clock: FakeClock, waits: tuple[str, ...], interval: float = 600.0) -> ParkedUnit:
    now = clock.monotonic()
    return ParkedUnit(API, "inc", waits, "parked, waiting", now, now, interval)


@pytest.mark.asyncio
async def test_a_dependency_becoming_active_resumes_at_once_not_at_the_timer() -> None:
    clock, rec = _GateClock(), _Recorder()
    reg = Parking(resume=rec.resume, remind=rec.remind, check=rec.check, clock=clock)
    reg.park(_info(clock, (DB,)))
    start = clock.mono
    await clock.run_until(start + 30)
    assert rec.resumed == [] and reg.waits_on(DB) and not reg.waits_on("other.service")
    reg.dependency_active(DB)
    await clock.run_until(clock.mono + 1)
    assert rec.resumed == [(API, Cue.DEPENDENCY_ACTIVE, f"{DB} is active")]
    assert reg.phase(API) is Phase.RESUMING
    # A second signal while the run is on does not start another.
    reg.dependency_active(DB)
    await clock.run_until(clock.mono + 5)
    assert len(rec.resumed) == 1
    assert rec.checks == []  # a unit dependency is a signal, never polled
    # The run ends parked again: the schedule counts from then.
    reg.park(_info(clock, (DB,)))
    assert reg.phase(API) is Phase.PARKED
    reg.release(API)
    assert reg.phase(API) is Phase.RELEASED and not reg.waits_on(DB)
    await reg.close()


@pytest.mark.asyncio
async def test_the_slow_retry_and_a_lost_run() -> None:
    clock, rec = _GateClock(), _Recorder()
    reg = Parking(resume=rec.resume, remind=rec.remind, check=None, clock=clock)
    reg.park(_info(clock, (), interval=100.0))
    start = clock.mono
    await clock.run_until(start + 99)
    assert rec.resumed == []
    await clock.run_until(start + 101)
    assert [c for _u, c, _d in rec.resumed] == [Cue.TIMER]
    # The resumed run never reported: after one more interval it is parked again, and
    # retried after another: never more often than the interval.
    await clock.run_until(start + 199)
    assert len(rec.resumed) == 1
    await clock.run_until(start + 305)
    assert len(rec.resumed) == 2
    await reg.close()


@pytest.mark.asyncio
async def test_probes_checked_on_a_cadence_and_a_pass_resumes() -> None:
    clock, rec = _GateClock(), _Recorder()
    reg = Parking(resume=rec.resume, remind=rec.remind, check=rec.check, clock=clock)
    reg.park(_info(clock, ("depends[0]",)))
    start = clock.mono
    await clock.run_until(start + 95)
    assert len(rec.checks) == 3  # every CHECK_EVERY (30 s)
    assert rec.resumed == []
    rec.check_ok = True
    await clock.run_until(start + 125)
    assert [c for _u, c, _d in rec.resumed] == [Cue.PROBE_PASSED]
    await reg.close()


@pytest.mark.asyncio
async def test_one_reminder_a_day() -> None:
    clock, rec = _GateClock(), _Recorder()
    reg = Parking(resume=rec.resume, remind=rec.remind, check=None, clock=clock)
    # A unit parked 2.5 days ago (a restarted listener): the days already reminded are
    # not reminded again, and the retry that is long due goes out at once.
    day = parking.DAY
    now = clock.monotonic()
    reg.park(ParkedUnit(API, "inc", (), "r", now - 2.5 * day, now - 10, day))
    await clock.run_until(now + 0.5 * day + 5)
    assert rec.reminded == [(API, 3)]
    await reg.close()


# --- the engine ---------------------------------------------------------------------------


def _down_db(bus_clock: FakeClock) -> tuple[FakeBus, FakeUnit]:
    db = FakeUnit(DB, behaviour=lambda n: "failed")
    api = FakeUnit(API, requires=(DB,))
    return FakeBus(db, api, clock=bus_clock), db


@dataclasses.dataclass
class _Parked:
    """API parked on its down dependency DB (whose own budget is one attempt)."""

    clock: FakeClock
    bus: FakeBus
    paths: Any
    engine: Any
    alerter: Any
    out: Any


async def _parked_api(tmp_path: Path) -> _Parked:
    clock = FakeClock()
    bus, _db = _down_db(clock)
    paths = _paths(tmp_path)
    _write_policy(paths, Policy(unit=DB, recovery=dataclasses.replace(FAST, max_attempts=1)))
    _write_policy(paths, Policy(unit=API, recovery=FAST))
    engine, _sink, alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover(API, ONFAIL)
    assert out.state is State.PARKED, out
    return _Parked(clock, bus, paths, engine, alerter, out)


@pytest.mark.asyncio
async def test_a_dependency_down_parks_the_dependent_then_its_return_recovers_it(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus, db = _down_db(clock)
    paths = _paths(tmp_path)
    _write_policy(paths, Policy(unit=DB, recovery=dataclasses.replace(FAST, max_attempts=1)))
    _write_policy(paths, Policy(unit=API, recovery=FAST))  # after_give_up not written
    engine, sink, alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover(API, ONFAIL)
    assert out.state is State.PARKED, out
    assert out.waiting_for == (DB,)
    assert out.reason.startswith(f"parked, waiting for {DB}; dependency: {DB} down"), out.reason
    assert API not in bus.restarted()
    ledger = Ledger(paths.run_dir / "ledger")
    mark = ledger.entry(API).parked
    assert mark is not None and mark.waiting_for == (DB,) and ledger.entry(API).gave_up is None
    row = engine.status(API)[0]
    assert row["state"] == f"parked, waiting for {DB}"
    assert isinstance(row["parked"], dict) and row["parked"]["waiting_for"] == [DB]
    info = engine.parked_info(API)
    assert info is not None and info.incident_id == out.incident_id
    assert [u.unit for u in engine.parked_units()] == [API]
    await engine.alerting.drain(1.0)
    assert [a.level for a in alerter.sent if a.unit == API][-1] != "alert-and-stop"
    assert any("parked" in a.summary for a in alerter.sent if a.unit == API)

    # A retry while it is still down: a fresh bounded run, parked again, same incident,
    # no restart and no second alert.
    sent = len(alerter.sent)
    again = await engine.recover(API, _resume("timer: retry every 600s"))
    assert again.state is State.PARKED and again.incident_id == out.incident_id
    assert API not in bus.restarted()
    await engine.alerting.drain(1.0)
    assert not [a for a in alerter.sent[sent:] if a.unit == API and a.status == "firing"]

    # The database is back: the resume recovers the dependent, in the same incident.
    db.props.update(ActiveState="active", SubState="running", Result="success")
    back = await engine.recover(API, _resume(f"dependency-active: {DB} is active"))
    assert back.state is State.RECOVERED and back.incident_id == out.incident_id
    assert bus.restarted().count(API) == 1
    steps = engine.history(API)[0]
    actions = [a["action"] for a in steps["attempts"]]  # type: ignore[union-attr]
    assert actions.count("park") == 2 and actions.count("unpark") == 2
    assert actions.index("restart") > max(i for i, a in enumerate(actions) if a == "unpark")
    assert (
        engine.parked_info(API) is None
        and Ledger(paths.run_dir / "ledger").entry(API).parked is None
    )
    assert engine.status(API)[0]["parked"] is None
    kinds = [(e.kind.value, e.fields.get("step")) for e in sink.events if e.unit == API]
    assert ("StepFinished", "parked") in kinds
    # A retry that comes after it recovered does nothing.
    late = await engine.recover(API, _resume("timer"))
    assert late.state is State.NOT_NEEDED and late.reason == "no longer parked"
    assert bus.restarted().count(API) == 1
    await engine.aclose()


@pytest.mark.asyncio
async def test_a_parked_budget_is_exact_a_retry_in_the_window_restarts_nothing(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(API, behaviour=lambda n: "failed"), clock=clock)
    health = Health(Probe("tcp", "127.0.0.1:1"))
    recovery = dataclasses.replace(FAST, max_attempts=2, stable_after=600.0)
    _write_policy(_paths(tmp_path), Policy(unit=API, recovery=recovery, health=health))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    first = await engine.recover(API, ONFAIL)
    assert first.state is State.PARKED and first.waiting_for == (parking.HEALTH,)
    assert bus.restarted() == [API, API]
    # Retried at once (its health probe passing, say) while both attempts still count:
    # diagnosed, still no budget, parked again without a restart.
    again = await engine.recover(API, _resume("probe-passed: ok"))
    assert again.state is State.PARKED and bus.restarted() == [API, API]
    # After the window the slow retry may use the budget again, and only it.
    clock.advance(601.0)
    later = await engine.recover(API, _resume("timer"))
    assert later.state is State.PARKED and bus.restarted() == [API] * 4
    assert later.incident_id == first.incident_id
    await engine.aclose()


@pytest.mark.asyncio
async def test_stop_is_the_old_give_up(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, _db = _down_db(clock)
    paths = _paths(tmp_path)
    _write_policy(paths, Policy(unit=DB, recovery=dataclasses.replace(FAST, max_attempts=1)))
    _write_policy(paths, Policy(unit=API, recovery=dataclasses.replace(FAST, after_give_up="stop")))
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover(API, ONFAIL)
    assert out.state is State.GAVE_UP and engine.parked_info(API) is None
    await engine.aclose()


@pytest.mark.asyncio
async def test_reset_unparks_and_reminders_go_once_a_day(tmp_path: Path) -> None:
    p = await _parked_api(tmp_path)
    engine, alerter = p.engine, p.alerter
    for day in (1, 1, 2):
        engine.remind_parked(API, day)
    await engine.alerting.drain(1.0)
    reminders = [a.summary for a in alerter.sent if "still parked" in a.summary]
    assert len(reminders) == 2 and "after 1 day(s)" in reminders[0], reminders
    await engine.reset(API)
    assert engine.parked_info(API) is None
    assert engine.status(API)[0]["parked"] is None
    await engine.aclose()


@pytest.mark.asyncio
async def test_a_parked_unit_reset_while_up_resolves_its_parked_alert(tmp_path: Path) -> None:
    """Reset ends the parking (the incident is closed 'reset'); with the unit up, its
    'parked' alert is over too, as a given-up one's is (found by bench/soak.py)."""
    p = await _parked_api(tmp_path)
    bus, engine, alerter, out = p.bus, p.engine, p.alerter, p.out
    await engine.alerting.drain(1.0)
    before = [a.status for a in alerter.sent if a.incident_id == out.incident_id]
    assert "firing" in before and "resolved" not in before
    bus.units[API].props.update(ActiveState="active", SubState="running")  # started by hand
    await engine.reset(API)
    await engine.alerting.drain(1.0)
    statuses = [a.status for a in alerter.sent if a.incident_id == out.incident_id]
    assert statuses == [*before, "resolved"], statuses
    await engine.aclose()


@pytest.mark.asyncio
async def test_parked_state_is_read_back_by_a_new_engine(tmp_path: Path) -> None:
    """A restarted listener's engine finds the parking, even with the ledger gone."""
    p = await _parked_api(tmp_path)
    clock, bus, paths, engine, out = p.clock, p.bus, p.paths, p.engine, p.out
    await engine.aclose()
    fresh, _s, _a = _engine(tmp_path, bus, clock)
    info = fresh.parked_info(API)
    assert info is not None and info.waiting_for == (DB,) and info.incident_id == out.incident_id
    await fresh.aclose()
    (paths.run_dir / "ledger" / f"{API}.json").unlink()
    bare, _s, _a = _engine(tmp_path, bus, clock)
    info = bare.parked_info(API)
    assert info is not None and info.waiting_for == ()  # only the slow retry knows it
    await bare.aclose()


# --- the ledger's park mark -----------------------------------------------------------------


def test_park_mark_round_trip_and_unpark(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    at = Stamp(10.0, 1000.0, "boot")
    mark = ParkMark("inc", (DB, "depends[0]"), "parked, waiting", at, at)
    assert ledger.park(API, mark)
    assert Ledger(tmp_path / "ledger").entry(API).parked == mark
    assert ledger.unpark(API)
    assert Ledger(tmp_path / "ledger").entry(API).parked is None
    assert ledger.entry(API).parked is None


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
)
def test_a_hostile_park_mark_counts_as_nothing(tmp_path_factory: Any, value: Any) -> None:
    directory = tmp_path_factory.mktemp("ledger")
    directory.chmod(0o700)
    (directory / f"{API}.json").write_text(json.dumps({"v": 1, "parked": value}))
    entry = Ledger(directory).entry(API)
    assert entry.parked is None or isinstance(entry.parked, ParkMark)


# --- the spec keys ---------------------------------------------------------------------------


def test_spec_keys_convert_and_bad_values_get_one_line() -> None:
    spec = parse_spec(
        with_service(recovery={"after_give_up": "park", "park_interval": "2min"}), SRC
    )
    r = spec.services["api"].recovery
    assert (r.after_give_up, r.park_interval) == ("park", 120.0)
    assert parse_spec(with_service(), SRC).services["api"].recovery.after_give_up is None
    bad = only_problem(with_service(recovery={"after_give_up": "later"}))
    assert bad.key == "service.api.recovery.after_give_up"
    assert "expected one of stop, park" in bad.message and "\n" not in bad.message
    assert "above zero" in only_problem(with_service(recovery={"park_interval": "0s"})).message
    assert "at most 86400s" in only_problem(with_service(recovery={"park_interval": "2d"})).message
    tiny = only_problem(with_service(recovery={"park_interval": "100ms"}))
    assert tiny.key == "service.api.recovery.park_interval" and "at least 1s" in tiny.message


@pytest.mark.asyncio
async def test_a_parked_unit_started_by_hand_is_seen_and_its_incident_closed(
    tmp_path: Path,
) -> None:
    p = await _parked_api(tmp_path)
    bus, paths, engine, out = p.bus, p.paths, p.engine, p.out
    bus.units[API].props.update(ActiveState="active", SubState="running", Result="success")
    seen = await engine.recover(API, _resume(f"active: {API} is active"))
    assert seen.state is State.NOT_NEEDED and API not in bus.restarted()
    inc = engine.history(API)[0]
    assert inc["incident_id"] == out.incident_id and inc["state"] == "recovered", inc
    assert engine.parked_info(API) is None
    assert Ledger(paths.run_dir / "ledger").entry(API).parked is None
    await engine.aclose()


@pytest.mark.asyncio
async def test_the_unit_itself_active_resumes_and_resumes_are_spaced() -> None:
    clock, rec = _GateClock(), _Recorder()
    reg = Parking(resume=rec.resume, remind=rec.remind, check=None, clock=clock)
    reg.park(_info(clock, (DB,)))
    assert reg.waits_on(API, itself=True) and not reg.waits_on(API)
    first = clock.mono
    reg.unit_active(API)
    await clock.run_until(first + 0.5)
    assert [c for _u, c, _d in rec.resumed] == [Cue.ACTIVE]
    # Parked again at once (a flapping dependency), signalled again at once: the next
    # resume waits out the gap since the last one instead of looping.
    reg.park(_info(clock, (DB,)))
    reg.dependency_active(DB)
    await clock.run_until(first + parking.RESUME_GAP - 0.5)
    assert len(rec.resumed) == 1
    await clock.run_until(first + parking.RESUME_GAP + 0.5)
    assert [c for _u, c, _d in rec.resumed] == [Cue.ACTIVE, Cue.DEPENDENCY_ACTIVE]
    await reg.close()


# --- the listener's side ---------------------------------------------------------------------


def _listener_watching_api(tmp_path: Path) -> tuple[Any, Any]:
    """A listener with one worker and a gated-open fake engine, watching api.service."""
    from test_listener import _listener

    listener, _bus, engine = _listener(tmp_path)
    engine.gate.set()
    listener._spawn(listener.queue.worker(), "w")
    listener.watch = type(listener.watch)(tmp_path / "p", ["api.service"])
    listener.watch.rescan()
    return listener, engine


@pytest.mark.asyncio
async def test_listener_resumes_a_parked_unit_on_its_dependency_signal(tmp_path: Path) -> None:
    from test_listener import _changed, _settle

    listener, engine = _listener_watching_api(tmp_path)
    # The engine reports a parking; the dependency is not even a watched unit.
    now = time.monotonic()
    info = ParkedUnit(API, "inc", ("other.target",), "r", now, now, 600)
    engine.parked_info = lambda unit: info if unit == API else None  # type: ignore[method-assign]
    listener.parked.changed(API, info)
    await _settle(listener)
    assert engine.calls == []  # the one look found it inactive: nothing to do
    # Signals of units nobody waits for, and non-active states, do nothing.
    listener._on_signal(_changed("else.service", "active", "running"))
    listener._on_signal(_changed("other.target", "activating", "start"))
    await _settle(listener)
    assert engine.calls == []
    listener._on_signal(_changed("other.target", "active", "active"))
    await _settle(listener)
    assert [(u, t["source"]) for u, t in engine.calls] == [(API, "parked")]
    assert engine.calls[0][1]["reason"] == "dependency-active: other.target is active"
    # A health round failing for a parked unit starts no run: its registry checks.
    listener._enqueue(API, "health")
    await _settle(listener)
    assert len(engine.calls) == 1
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_parked_unit_reset_elsewhere_is_the_ladders_again_on_its_next_health_failure(
    tmp_path: Path,
) -> None:
    """`unitgen reset` (another process) ends the parking in the history and the
    ledger, not in this daemon's registry: the registry's mark must not swallow the
    unit's health failures from then on (found by bench/soak.py)."""
    from test_listener import _settle

    listener, engine = _listener_watching_api(tmp_path)
    now = time.monotonic()
    info = ParkedUnit(API, "inc", (), "budget", now, now, 600)
    parked = {API: info}
    engine.parked_info = parked.get  # type: ignore[method-assign]
    listener.parked.changed(API, info)
    listener._enqueue(API, "health")
    await _settle(listener)
    assert engine.calls == []  # parked: the registry checks the probe itself
    del parked[API]  # reset by an operator: the history says so, the registry does not
    listener._enqueue(API, "health")
    await _settle(listener)
    assert [(u, t["source"]) for u, t in engine.calls] == [(API, "health")]
    assert not listener.parked.registry.waits_on(API, itself=True)
    # The registry's own check passes a unit no longer parked, so its retry ends it.
    assert await listener.parked.check(API, ("health",)) == (True, "no longer parked")
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_full_disk_parks_and_the_disk_check_passing_is_seen(tmp_path: Path) -> None:
    from unitgen.model import Disk, Threshold

    clock = FakeClock()
    bus = FakeBus(FakeUnit(API), clock=clock)
    data = tmp_path / "data"
    data.mkdir()
    paths = _paths(tmp_path)
    # 100 % free can never hold on a real filesystem: always "low".
    full = Disk(paths=(str(data),), min_free=Threshold(percent=100.0))
    policy = Policy(unit=API, recovery=dataclasses.replace(FAST, after_give_up="park"), disk=full)
    _write_policy(paths, policy)
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    out = await engine.recover(API, ONFAIL)
    assert out.state is State.PARKED and out.waiting_for == (parking.DISK,)
    assert out.reason.startswith("parked, waiting for free disk space; disk: "), out.reason
    assert bus.restarted() == []
    ok, detail = await engine.check_parked(API, (parking.DISK,))
    assert not ok and detail
    # Space freed (here: the floor lowered): the check passes, and the retry restarts it.
    _write_policy(paths, dataclasses.replace(policy, disk=Disk(paths=(str(data),))))
    ok, _detail = await engine.check_parked(API, (parking.DISK,))
    assert ok
    back = await engine.recover(API, _resume("probe-passed: disk ok"))
    assert back.state is State.RECOVERED and bus.restarted() == [API]
    await engine.aclose()
