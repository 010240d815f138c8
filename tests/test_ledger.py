"""The run-dir ledger (handlers/ledger.py) and the engine's use of it, fast.

The real-manager tests are in tests/test_recovery_degraded_sandbox.py; these pin
the file format's hostile-input handling and the engine's decisions with a
history database that cannot keep anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy
from test_recovery import FAST, ONFAIL, FakeBus, FakeClock, FakeUnit, _engine

from handlers.ladder import State
from handlers.ledger import Entry, Ledger, LedgerError, _parse
from handlers.recovery import RecoveryEngine, Trigger
from handlers.store import Stamp, Store
from unitgen.policy import Policy

UNIT = "api.service"
THREE = dataclasses.replace(FAST, max_attempts=3)


def _stamp(mono: float, wall: float = 1_700_000_000.0) -> Stamp:
    return Stamp(mono, wall + mono, "boot")


# --- the file ---------------------------------------------------------------------------


def test_round_trip_and_union_with_memory(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    assert ledger.record_attempt(UNIT, _stamp(1.0), horizon=600)
    assert ledger.record_attempt(UNIT, _stamp(2.0), horizon=600)
    assert ledger.give_up(UNIT, "inc", "budget", _stamp(3.0))
    other = Ledger(tmp_path / "ledger")  # another process
    e = other.entry(UNIT)
    assert [a.mono for a in e.attempts] == [1.0, 2.0]
    assert e.gave_up is not None and e.gave_up.reason == "budget"
    # The file goes (run dir wiped): the process that wrote it still remembers.
    (tmp_path / "ledger" / f"{UNIT}.json").unlink()
    assert [a.mono for a in ledger.entry(UNIT).attempts] == [1.0, 2.0]
    # The same attempt known twice counts once.
    merged = e.merged(e)
    assert len(merged.attempts) == 2


def test_stray_files_are_not_units(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.record_attempt(UNIT, _stamp(1.0), horizon=600)
    for name in ("not a unit.json", "x.json", ".hidden.service.json", "notes.txt"):
        (tmp_path / "ledger" / name).write_text("{}")
    assert Ledger(tmp_path / "ledger").units() == [UNIT]


def test_written_atomically_private_and_without_leftovers(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    for i in range(20):
        assert ledger.record_attempt(UNIT, _stamp(float(i)), horizon=5.0)
    names = os.listdir(tmp_path / "ledger")
    assert names == [f"{UNIT}.json"]
    path = tmp_path / "ledger" / f"{UNIT}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ledger").stat().st_mode & 0o777 == 0o700
    # Older than the horizon: dropped when the next attempt is written.
    assert [a.mono for a in ledger.entry(UNIT).attempts] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]


def test_reset_forgets_but_remembers_when(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.record_attempt(UNIT, _stamp(1.0), horizon=600)
    ledger.give_up(UNIT, "inc", "budget", _stamp(2.0))
    assert ledger.reset(UNIT, _stamp(3.0))
    e = Ledger(tmp_path / "ledger").entry(UNIT)
    assert e.attempts == () and e.gave_up is None
    assert e.reset is not None and e.reset.mono == 3.0


def test_unusable_directory_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ledger").write_text("a file, not a directory")
    ledger = Ledger(tmp_path / "run" / "ledger")
    assert not ledger.record_attempt(UNIT, _stamp(1.0), horizon=600)
    assert ledger.problem is not None and "ledger" in ledger.problem
    # The count is still kept in this process.
    assert len(ledger.entry(UNIT).attempts) == 1
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    shared = Ledger(open_dir)
    assert not shared.writable(UNIT)
    assert shared.problem is not None and "group- or other-writable" in shared.problem
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    assert not Ledger(tmp_path / "link").writable(UNIT)
    assert list(target.iterdir()) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_are_empty_or_refused(raw: bytes) -> None:
    try:
        entry = _parse(raw)
    except LedgerError:
        return
    assert isinstance(entry, Entry)


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"v": st.just(1)},
        optional={"attempts": _json, "gave_up": _json, "reset": _json, "gap_alerted": _json},
    )
)
def test_hostile_json_is_refused_or_well_typed(data: dict[str, object]) -> None:
    try:
        entry = _parse(json.dumps(data).encode())
    except LedgerError:
        return
    for a in entry.attempts:
        assert isinstance(a.mono, float) and isinstance(a.boot, str)
    assert entry.gap_alerted is None or isinstance(entry.gap_alerted, float)


def test_a_garbage_file_is_overwritten_by_the_next_count(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    d.mkdir(mode=0o700)
    (d / f"{UNIT}.json").write_bytes(b"\x00garbage{")
    ledger = Ledger(d)
    assert ledger.entry(UNIT) == Entry()
    assert ledger.record_attempt(UNIT, _stamp(1.0), horizon=600)
    assert len(Ledger(d).entry(UNIT).attempts) == 1


# --- the engine -------------------------------------------------------------------------


def _failing(clock: FakeClock) -> tuple[FakeBus, FakeUnit]:
    # Each ladder restart crashes at once and systemd's Restart= takes it: one restart
    # per run, like one OnFailure= process per start-limit-hit.
    unit = FakeUnit(UNIT, behaviour=lambda n: "auto-restart")
    return FakeBus(unit, clock=clock), unit


def _fail_again(unit: FakeUnit) -> None:
    unit.props.update(ActiveState="failed", SubState="failed", Result="exit-code")


@pytest.mark.asyncio
async def test_budget_is_spent_once_across_processes_without_history(tmp_path: Path) -> None:
    """Each OnFailure= process finds no history (full disk): the ledger counts."""
    clock = FakeClock()
    bus, unit = _failing(clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    outcomes = []
    alerts: list[str] = []
    for _ in range(6):
        engine, _sink, alerter = _engine(
            tmp_path, bus, clock, store=Store.in_memory("database or disk is full")
        )
        outcomes.append(await engine.recover(UNIT, ONFAIL))
        await engine.aclose()
        alerts += [a.summary for a in alerter.sent]
        _fail_again(unit)
        clock.advance(1.0)
    assert len(bus.restarted()) == 3  # without the ledger: one per process, for ever
    assert [o.state for o in outcomes[3:]] == [State.GAVE_UP] * 3
    assert outcomes[3].reason == "budget"
    # The history gap: one alert, and one give-up alert; nothing after the give-up.
    assert sum("recovery history not kept" in s for s in alerts) == 1
    assert sum("left failed" in s for s in alerts) == 1


def _corrupt(db: Path) -> None:
    db.write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.asyncio
async def test_give_up_survives_the_database_moved_aside(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT, behaviour=lambda n: "failed"), clock=clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock)
    first = await engine.recover(UNIT, ONFAIL)
    await engine.aclose()
    assert first.state is State.GAVE_UP and len(bus.restarted()) == 3
    _corrupt(_paths(tmp_path).database)  # the next open moves it aside
    engine2, _s2, alerter2 = _engine(tmp_path, bus, clock)
    again = await engine2.recover(UNIT, Trigger("reconcile"))
    status = engine2.status(UNIT)
    await engine2.aclose()
    assert again.state is State.GAVE_UP and "given up earlier" in again.reason
    assert len(bus.restarted()) == 3
    assert alerter2.sent == []
    assert str(status[0]["state"]).startswith("gave-up")
    # unitgen reset re-arms it through the ledger too.
    engine3, _s3, _a3 = _engine(tmp_path, bus, clock)
    await engine3.reset(UNIT)
    assert engine3.ledger.entry(UNIT).gave_up is None
    assert engine3.ledger.entry(UNIT).attempts == ()
    clock.advance(1.0)
    out = await engine3.recover(UNIT, Trigger("reconcile"))
    await engine3.aclose()
    assert len(bus.restarted()) > 3, out


@pytest.mark.asyncio
async def test_reset_in_another_process_is_not_undone_by_a_daemons_memory(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    bus, unit = _failing(clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    daemon, _s, _a = _engine(tmp_path, bus, clock, store=Store.in_memory("read-only"))
    for i in range(4):
        await daemon.recover(UNIT, Trigger("listener", invocation_id=f"{i:032x}"))
        _fail_again(unit)
        clock.advance(1.0)
    assert len(bus.restarted()) == 3
    cli, _s2, _a2 = _engine(tmp_path, bus, clock, store=Store.in_memory("read-only"))
    await cli.reset(UNIT)
    await cli.aclose()
    clock.advance(1.0)
    _fail_again(unit)
    out = await daemon.recover(UNIT, Trigger("listener"))
    await daemon.aclose()
    assert out.restarts == 1 and len(bus.restarted()) == 4, out


@pytest.mark.asyncio
async def test_no_count_anywhere_fails_safe_with_one_alert_and_a_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, _unit = _failing(clock)
    paths = _paths(tmp_path)
    _write_policy(paths, Policy(unit=UNIT, recovery=THREE))
    paths.run_dir.mkdir(parents=True)
    (paths.run_dir / "ledger").write_text("not a directory")
    engine, _s, alerter = _engine(tmp_path, bus, clock, store=Store.in_memory("disk is full"))
    out = await engine.recover(UNIT, ONFAIL)
    await engine.aclose()
    assert bus.restarted() == []
    assert out.state is State.GAVE_UP and out.reason.startswith("uncounted: "), out
    assert "disk is full" in out.reason and "ledger" in out.reason
    assert len(alerter.sent) == 1 and alerter.sent[0].level == "alert-and-stop"


@pytest.mark.asyncio
async def test_status_says_since_when_history_is_degraded(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, _unit = _failing(clock)
    _write_policy(_paths(tmp_path), Policy(unit=UNIT, recovery=THREE))
    engine, _s, _a = _engine(tmp_path, bus, clock, store=Store.in_memory("disk is full"))
    await engine.recover(UNIT, ONFAIL)
    await engine.aclose()
    since = Ledger(_paths(tmp_path).run_dir / "ledger").gap()
    assert since is not None and since.since == clock.time()
    clock.advance(30.0)
    # A later status (another process, history still unwritable) keeps the first time.
    reader = RecoveryEngine(bus, _paths(tmp_path), clock=clock, store=Store.in_memory("x"))
    rows = reader.status()
    assert [r["unit"] for r in rows] == [UNIT]  # known from the ledger alone
    assert rows[0]["history_degraded_since"] == since.since
    assert "disk is full" in str(rows[0]["history_degraded_reason"])
    assert rows[0]["attempts_in_window"] == 1
    # History writable again: the next run ends the gap.
    healthy, _s2, _a2 = _engine(tmp_path, bus, clock)
    _fail_again(_unit)
    await healthy.recover(UNIT, ONFAIL)
    assert healthy.status(UNIT)[0]["history_degraded_since"] is None
    await healthy.aclose()
