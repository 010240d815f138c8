"""handlers.handoff, its pure parts: the names it calls and the reply it turns into an Outcome.

The hand-off itself, against a real daemon on a real bus, is in
tests/test_watch_sandbox.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from handlers import busnames, dbus_api, handoff
from handlers.ladder import Level, State
from handlers.recovery import Outcome


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
