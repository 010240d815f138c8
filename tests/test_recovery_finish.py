"""The end of a run (handlers/recovery/finish.py): one table, keyed by state and give-up reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _write_policy
from test_recovery import FAST, ONFAIL, FakeBus, FakeClock, FakeUnit, _engine

from handlers import ladder
from handlers.ladder import GiveUp, State
from handlers.recovery.finish import ENDINGS, Close
from handlers.store import Store
from unitgen.policy import Policy

UNIT = "api.service"


def test_every_edge_into_a_terminal_state_has_its_ending() -> None:
    edges = list(ladder.TRANSITIONS.values())
    # after_give_up = "park" turns each parkable give-up edge into one into PARKED.
    edges += [ladder.park_instead(t, "park") for t in edges]
    ends = {(t.target, t.give_up) for t in edges if t.target.terminal}
    # The dry run's stop before the restart is the one non-terminal ending.
    assert set(ENDINGS) == ends | {(State.RESTARTING, None)}
    assert {why for state, why in ENDINGS if state is State.GAVE_UP} == set(GiveUp)
    assert {why for state, why in ENDINGS if state is State.PARKED} == set(ladder.PARKABLE)
    # Only a give-up closes an incident given up; the earlier give-up touches nothing.
    for (state, why), ending in ENDINGS.items():
        if state is State.PARKED:
            assert ending.close is Close.PARKED
            continue
        assert (ending.close is Close.GAVE_UP) == (why not in (None, GiveUp.GIVEN_UP)), state


@pytest.mark.asyncio
async def test_a_run_that_only_finds_an_earlier_give_up_alerts_nothing(tmp_path: Path) -> None:
    """Not even the history gap: the give-up is known from the ledger alone, and the
    alert would go out under an incident this run did not handle."""
    clock = FakeClock()
    bus = FakeBus(FakeUnit(UNIT, behaviour=lambda n: "failed"), clock=clock)
    _write_policy(
        _paths(tmp_path), Policy(unit=UNIT, recovery=dataclasses.replace(FAST, max_attempts=2))
    )
    engine, _sink, _alerter = _engine(tmp_path, bus, clock)
    first = await engine.recover(UNIT, ONFAIL)
    await engine.aclose()
    assert first.state is State.GAVE_UP
    clock.advance(5.0)
    # The history is lost now (full disk): only the ledger knows of the give-up.
    engine2, _sink2, alerter2 = _engine(
        tmp_path, bus, clock, store=Store.in_memory("database or disk is full")
    )
    again = await engine2.recover(UNIT, ONFAIL)
    await engine2.aclose()
    assert again.state is State.GAVE_UP and again.reason.startswith("given up earlier"), again
    assert alerter2.sent == []
