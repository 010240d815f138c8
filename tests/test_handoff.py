"""handlers.handoff, its pure parts: the names it calls, the reply it turns into an Outcome,
and its read-only look-up of the shared history (a real SQLite file).

The hand-off itself, against a real daemon on a real bus, is in
tests/test_watch_sandbox.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import busnames, dbus_api, handoff
from handlers.handoff import handled_incident, outcome_from_record
from handlers.ladder import Level, State
from handlers.recovery import Outcome
from handlers.store import Stamp, Store


def test_the_caller_and_the_server_use_the_same_names() -> None:
    for name in ("BUS_NAME", "OBJECT_PATH", "INTERFACE"):
        assert getattr(handoff, name) is getattr(dbus_api, name) is getattr(busnames, name)
    assert (
        dbus_api.INTROSPECTION_XML.read_text(encoding="utf-8").count(
            f'<interface name="{busnames.INTERFACE}">'
        )
        == 1
    )


def test_importing_handoff_does_not_load_the_server_side() -> None:
    # The OnFailure= path imports handoff; the D-Bus server is the daemon's.
    code = (
        "import json, sys, handlers.handoff; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('handlers'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "handlers.busnames" in loaded
    assert not loaded & {"handlers.dbus_api", "handlers.access", "handlers.recovery"}


def test_outcome_from_a_full_record() -> None:
    record = {
        "unit": "api.service",
        "state": "recovered",
        "reason": "restarted",
        "attempts": 2,
        "incident_id": "inc-1",
        "level": 2,
        "classification": "exit-code",
        "restarts": 1,
        "joined": True,
        "duration": 1.5,
        "notes": ["first", 7, "second"],
    }
    outcome = handoff.outcome_from_record(record, "other.service")
    assert outcome == Outcome(
        unit="api.service",
        state=State.RECOVERED,
        reason="restarted",
        attempts=2,
        incident_id="inc-1",
        level=Level.RESTART_WITH_DEPENDENCIES,
        classification="exit-code",
        restarts=1,
        joined=True,
        duration=1.5,
        notes=("handled by the running unitgen watch daemon", "first", "second"),
    )


def test_outcome_from_an_empty_record_names_the_unit_asked_for() -> None:
    outcome = handoff.outcome_from_record({}, "api.service")
    assert (outcome.unit, outcome.state, outcome.level) == (
        "api.service",
        State.DIAGNOSING,
        Level.RESTART,
    )
    assert (outcome.attempts, outcome.restarts, outcome.duration) == (0, 0, 0.0)
    for notes in ("abc", 3):  # not a list of notes: none kept, no crash
        assert handoff.outcome_from_record({"notes": notes}, "a.service").notes == (
            "handled by the running unitgen watch daemon",
        )


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
)
KEYS = st.sampled_from(
    [
        "unit",
        "state",
        "reason",
        "attempts",
        "incident_id",
        "level",
        "classification",
        "restarts",
        "joined",
        "duration",
        "notes",
        "other",
    ]
)


@given(record=st.dictionaries(KEYS, VALUES))
def test_any_reply_becomes_a_well_typed_outcome(record: dict[str, Any]) -> None:
    # A newer or confused daemon must not crash the caller that prints its answer.
    outcome = handoff.outcome_from_record(record, "api.service")
    assert isinstance(outcome, Outcome)
    assert isinstance(outcome.state, State) and isinstance(outcome.level, Level)
    assert all(isinstance(v, str) for v in (outcome.unit, outcome.reason, outcome.incident_id))
    assert all(type(v) is int for v in (outcome.attempts, outcome.restarts))
    assert isinstance(outcome.duration, float)
    assert all(isinstance(n, str) for n in outcome.notes)
    json.dumps(outcome.to_dict())


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
