"""diagnose.decide() over the property sequences systemd 252 sends, and invocation_hex.

The sequences are the ones recorded in the sandbox (docs/listener.md, "Who
restarts"): each step is one state's pair of PropertiesChanged signals, the
Service interface's first, then the Unit interface's, folded the way the
listener folds them. The listener's sandbox tests (test_listener_sandbox.py,
test_giveup_sandbox.py) are the proof against a real systemd; these pin the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.diagnose import (
    SERVICE_LIVE,
    SERVICE_STATIC,
    SNAPSHOT,
    STATE_NOW,
    STATIC,
    UNIT_LIVE,
    Action,
    Basis,
    Decision,
    UnitView,
    decide,
    diagnosis_from,
    invocation_hex,
    restart_pending,
    systemd_would_restart,
)

A = "c40c" * 8  # the crashed invocation
B = "689a" * 8  # the next one
NO_JOB = (0, "/")
JOB = (77, "/org/freedesktop/systemd1/job/77")


@dataclass(frozen=True)
class Step:
    """One state: (ActiveState, SubState, Job, InvocationID), and the Service's Result."""

    active: str
    sub: str
    job: tuple[int, str] = NO_JOB
    inv: str = A
    result: str = "signal"


def _settings(restart: str, force: tuple[list[int], list[int]] = ([], [])) -> dict[str, Any]:
    return {
        "LoadState": "loaded",
        "Requires": [],
        "BindsTo": [],
        "Wants": [],
        "After": [],
        "Restart": restart,
        "RestartForceExitStatus": force,
        "PIDFile": "",
        "StateDirectory": [],
        "LogsDirectory": [],
    }


def _fold(steps: list[Step]) -> tuple[dict[str, Any], str]:
    """The listener's live properties after these signals, and the invocation last
    seen in auto-restart."""
    live: dict[str, Any] = {}
    auto_restart = ""
    for step in steps:
        code = 2 if step.result == "signal" else 1
        live.update(Result=step.result, ExecMainCode=code, ExecMainStatus=9)
        live.update(NRestarts=0, MainPID=0)
        live.update(ActiveState=step.active, SubState=step.sub, Job=step.job)
        live["InvocationID"] = bytes.fromhex(step.inv)
        if step.sub == "auto-restart":
            auto_restart = invocation_hex(live["InvocationID"])
    return live, auto_restart


def _on_signals(steps: list[Step], settings: dict[str, Any] | None) -> Decision:
    live, auto_restart = _fold(steps)
    props = {**(settings or {}), **live}
    view = UnitView.of(
        props,
        settings_known=settings is not None,
        signalled=True,
        answered=False,
        last_auto_restart=auto_restart,
    )
    return decide(view)


def _answered(steps: list[Step], settings: dict[str, Any], now: Step) -> Decision:
    """The decision once systemd answered the round trip with ``now``'s state."""
    live, auto_restart = _fold(steps)
    props = {**settings, **live}
    props.update(
        ActiveState=now.active,
        SubState=now.sub,
        Job=now.job,
        InvocationID=bytes.fromhex(now.inv),
    )
    view = UnitView.of(props, answered=True, last_auto_restart=auto_restart)
    return decide(view)


KILLED = Step("failed", "failed")
AUTO_RESTART = Step("activating", "auto-restart")
# The start limit: the restart job is queued, refused, and the unit fails with it attached.
START_LIMIT = [
    KILLED,
    AUTO_RESTART,
    Step("activating", "auto-restart", JOB),
    Step("inactive", "dead", JOB),
    Step("failed", "failed", JOB),
]


@pytest.mark.parametrize(
    ("case", "steps", "settings", "expected"),
    [
        # Restart=on-failure covers a kill: only systemd's answer tells.
        ("auto-restart", [KILLED], _settings("on-failure"), (Action.ASK, Basis.MAY_RESTART)),
        # Restart=no: systemd will not restart it, and the signals say so.
        ("restart=no", [KILLED], _settings("no"), (Action.RECOVER, Basis.NO_RESTART)),
        # auto-restart -> dead -> failed of one invocation: the restart job was refused.
        ("start-limit", START_LIMIT, _settings("on-failure"), (Action.RECOVER, Basis.START_LIMIT)),
        # The job-less failed that follows (JobRemoved): still the give-up.
        (
            "start-limit, job gone",
            [*START_LIMIT, Step("failed", "failed")],
            _settings("on-failure"),
            (Action.RECOVER, Basis.START_LIMIT),
        ),
        # Results Restart= does not cover (systemd.service(5), table 2).
        (
            "on-abnormal, exit-code",
            [Step("failed", "failed", result="exit-code")],
            _settings("on-abnormal"),
            (Action.RECOVER, Basis.NO_RESTART),
        ),
        (
            "on-watchdog, signal",
            [KILLED],
            _settings("on-watchdog"),
            (Action.RECOVER, Basis.NO_RESTART),
        ),
        (
            "always, start-limit-hit",
            [Step("failed", "failed", result="start-limit-hit")],
            _settings("always"),
            (Action.RECOVER, Basis.NO_RESTART),
        ),
        # RestartForceExitStatus= restarts whatever Restart= says: ask.
        (
            "restart=no, forced status",
            [KILLED],
            _settings("no", ([3], [])),
            (Action.ASK, Basis.MAY_RESTART),
        ),
        (
            "restart=no, forced signal",
            [KILLED],
            _settings("no", ([], [9])),
            (Action.ASK, Basis.MAY_RESTART),
        ),
        # A job queued on a failed unit (an operator's start): someone acts, ask.
        (
            "job queued",
            [Step("failed", "failed", JOB)],
            _settings("on-failure"),
            (Action.ASK, Basis.MAY_RESTART),
        ),
        # A unit systemd later stopped: on the signals, Restart=no, not failed any more.
        (
            "restart=no, stopped since",
            [KILLED, Step("inactive", "dead", inv=B, result="success")],
            _settings("no"),
            (Action.LEAVE, Basis.NO_RESTART),
        ),
        (
            "restart=no, started since",
            [KILLED, Step("active", "running", inv=B, result="success")],
            _settings("no"),
            (Action.STAND_DOWN, Basis.NO_RESTART),
        ),
    ],
)
def test_decide_on_the_signals(
    case: str,
    steps: list[Step],
    settings: dict[str, Any],
    expected: tuple[Action, Basis],
) -> None:
    decision = _on_signals(steps, settings)
    assert (decision.action, decision.basis) == expected, case
    limit = decision.basis is Basis.START_LIMIT
    assert decision.result == ("start-limit-hit" if limit else "")
    assert decision.job_refused is limit
    assert decision.without_read is (decision.basis in (Basis.START_LIMIT, Basis.NO_RESTART))
    assert decision.reads == (STATE_NOW if decision.action is Action.ASK else ())


@pytest.mark.parametrize(
    ("case", "steps", "now", "expected"),
    [
        ("restarting", [KILLED], AUTO_RESTART, Action.STAND_DOWN),
        (
            "restart job queued",
            [KILLED],
            Step("activating", "auto-restart", JOB),
            Action.STAND_DOWN,
        ),
        ("already back", [KILLED], Step("active", "running", inv=B), Action.STAND_DOWN),
        ("starting", [KILLED], Step("activating", "start", inv=B), Action.STAND_DOWN),
        # RestartPreventExitStatus= (or any refusal): still failed after systemd's decision.
        ("gave up", [KILLED], KILLED, Action.RECOVER),
        # A job on a failed unit goes to the ladder, which sees it pending and records it.
        ("failed, job queued", [KILLED], Step("failed", "failed", JOB), Action.RECOVER),
        ("stopped by an operator", [KILLED], Step("inactive", "dead", inv=B), Action.LEAVE),
        ("stopped, start job queued", [KILLED], Step("inactive", "dead", JOB, B), Action.LEAVE),
    ],
)
def test_decide_on_systemds_answer(
    case: str, steps: list[Step], now: Step, expected: Action
) -> None:
    decision = _answered(steps, _settings("on-failure"), now)
    assert decision.action is expected, case
    assert decision.basis is Basis.ANSWERED
    assert decision.result == "" and not decision.job_refused and not decision.without_read


def test_an_answered_failure_in_the_auto_restart_invocation_is_the_start_limit() -> None:
    # The round trip was needed (e.g. the view was incomplete), and it shows the give-up.
    decision = _answered(START_LIMIT[:3], _settings("on-failure"), KILLED)
    assert decision == Decision(Action.RECOVER, Basis.ANSWERED, result="start-limit-hit")
    # A new invocation failing is a new crash, not the start limit.
    decision = _answered(START_LIMIT[:3], _settings("on-failure"), Step("failed", "failed", inv=B))
    assert decision == Decision(Action.RECOVER, Basis.ANSWERED)


def test_unread_settings_are_read_first() -> None:
    # Seen failing in signals: only the Service interface's static keys are missing.
    decision = _on_signals([KILLED], None)
    assert decision == Decision(Action.READ, Basis.UNREAD, reads=SERVICE_STATIC)
    # Failed before the listener started: no signals, the whole unit is read.
    view = UnitView.of({}, settings_known=False, answered=False)
    assert decide(view) == Decision(Action.READ, Basis.UNREAD, reads=())


def test_an_incomplete_view_is_asked_even_for_restart_no() -> None:
    # The Service interface's signal was not seen: no Result, so no snapshot either.
    live = {"ActiveState": "failed", "SubState": "failed", "InvocationID": bytes.fromhex(A)}
    view = UnitView.of({**_settings("no"), **live}, answered=False, last_auto_restart=A)
    assert not view.complete
    assert decide(view) == Decision(Action.ASK, Basis.MAY_RESTART, reads=STATE_NOW)


def test_property_sets() -> None:
    assert set(STATIC) >= set(SERVICE_STATIC) and "Restart" in SERVICE_STATIC
    assert set(SNAPSHOT) == {*SERVICE_LIVE, *UNIT_LIVE, "LoadState"}
    assert STATE_NOW == ("ActiveState", "SubState", "InvocationID", "Job")
    # A snapshot made of the signals and the static keys is a full diagnosis input.
    live, _ = _fold([KILLED])
    diag = diagnosis_from("u.service", {**_settings("no"), **live})
    assert (diag.result, diag.exec_main_code, diag.invocation_id) == ("signal", 2, A)
    assert (diag.restart_setting, diag.job_queued) == ("no", False)


# -- the engine's questions, on the same view -------------------------------------


@pytest.mark.parametrize(
    ("props", "pending", "due"),
    [
        ({"ActiveState": "activating", "SubState": "auto-restart"}, True, False),
        ({"ActiveState": "failed", "SubState": "failed-before-auto-restart"}, True, False),
        ({"ActiveState": "inactive", "SubState": "dead", "Job": JOB}, True, False),
        ({"ActiveState": "active", "SubState": "running", "Job": JOB}, False, False),
        ({"ActiveState": "failed", "Result": "signal", "Restart": "on-failure"}, False, True),
        ({"ActiveState": "failed", "Result": "signal", "Restart": "on-abort"}, False, True),
        ({"ActiveState": "failed", "Result": "exit-code", "Restart": "on-abort"}, False, False),
        ({"ActiveState": "failed", "Result": "start-limit-hit", "Restart": "always"}, False, False),
        ({"ActiveState": "failed", "Result": "signal"}, False, False),  # Restart= unknown: no
        ({"ActiveState": "failed", "Result": "", "Restart": "always"}, False, False),
        ({"ActiveState": "failed", "Result": "signal", "Restart": "sometimes"}, False, False),
    ],
)
def test_restart_pending_and_due(props: dict[str, Any], pending: bool, due: bool) -> None:
    view = UnitView.of(props)
    assert view.restart_pending is pending and restart_pending(props) is pending
    assert view.restart_due is due and systemd_would_restart(props) is due


# -- invocation_hex ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (bytes.fromhex(A), A),
        (bytearray(b"\x01\xff"), "01ff"),
        ([1, 255], "01ff"),
        ([256], ""),
        (["x"], ""),
        (A, A),
        (None, ""),
        (7, ""),
        (b"", ""),
    ],
)
def test_invocation_hex(value: object, expected: str) -> None:
    assert invocation_hex(value) == expected


@given(st.binary(max_size=32))
def test_invocation_hex_of_bytes_and_of_their_list_agree(raw: bytes) -> None:
    assert invocation_hex(raw) == invocation_hex(list(raw)) == raw.hex()
    assert invocation_hex(raw.hex()) == raw.hex()


def test_one_conversion_serves_the_listener_and_adoption() -> None:
    from handlers import adoption, listener

    assert listener.invocation_hex is invocation_hex
    assert adoption.invocation_hex is invocation_hex
