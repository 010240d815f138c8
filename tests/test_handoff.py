"""The OnFailure= hand-off's read of the shared history (a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.handoff import handled_incident, outcome_from_record
from handlers.ladder import State
from handlers.store import Stamp, Store

INV = "ab" * 16


def _history(path: Path, *, close: bool) -> str:
    store = Store.open(path)
    try:
        incident = store.open_incident(
            "api.service",
            source="listener",
            invocation_id=INV,
            classification="start-limit-hit",
            level=1,
            at=Stamp(100.0, 1_700_000_000.0, "boot"),
            handled_at=1_700_000_000.0,
        )
        store.record_attempt(
            incident,
            "api.service",
            at=Stamp(100.001, 1_700_000_000.001, "boot"),
            level=1,
            action="restart",
            result="ok",
            reason="active (attempt 1)",
            duration=0.004,
        )
        if close:
            store.close_incident(
                incident,
                state="recovered",
                reason="active again after 1 restart(s)",
                at=Stamp(100.02, 1_700_000_000.02, "boot"),
            )
        return incident
    finally:
        store.close()


def test_a_closed_incident_of_the_invocation_is_the_outcome(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    incident = _history(db, close=True)
    record = handled_incident(db, "api.service", INV)
    assert record is not None
    out = outcome_from_record(record, "api.service")
    assert out.state is State.RECOVERED and out.incident_id == incident
    assert out.classification == "start-limit-hit" and out.attempts == 1
    assert out.restarts == 0 and out.joined  # restarted by the daemon, not by this process
    assert out.duration == pytest.approx(0.02)
    assert any("opened by the listener" in n for n in out.notes)


def test_an_open_incident_or_another_invocation_asks_the_daemon(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    _history(db, close=False)
    assert handled_incident(db, "api.service", INV) is None  # still running: join it
    _history(tmp_path / "other.sqlite3", close=True)
    assert handled_incident(tmp_path / "other.sqlite3", "api.service", "cd" * 16) is None
    assert handled_incident(tmp_path / "other.sqlite3", "web.service", INV) is None
    assert handled_incident(tmp_path / "other.sqlite3", "api.service", "") is None


def test_a_missing_or_broken_history_is_no_answer_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite3"
    assert handled_incident(missing, "api.service", INV) is None
    assert not missing.exists()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    assert handled_incident(garbage, "api.service", INV) is None
    assert garbage.read_bytes() == b"not a database" * 100


@settings(max_examples=50, deadline=None)
@given(unit=st.text(max_size=80), invocation=st.text(max_size=80))
def test_hostile_names_are_only_ever_parameters(
    tmp_path_factory: pytest.TempPathFactory, unit: str, invocation: str
) -> None:
    db = tmp_path_factory.mktemp("h") / "history.sqlite3"
    _history(db, close=True)
    record = handled_incident(db, unit, invocation)
    assert record is None or (unit, invocation) == ("api.service", INV)
