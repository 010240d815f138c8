"""handlers/diagnose.py: the pure decisions over a unit's properties (no systemd here).

What systemd 252 actually sends is proved in tests/test_listener_sandbox.py and
tests/test_recovery_sandbox.py; these pin the rules themselves: systemd.service(5)'s
table of which Restart= setting restarts after which result, the classification,
and the "is systemd restarting it" reading of the properties.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import diagnose
from handlers.diagnose import (
    CLASSES,
    SETTLE_TIMEOUT,
    classify,
    diagnosis_from,
    job_queued,
    restart_covers,
    restart_pending,
    settle,
    systemd_would_restart,
)

# systemd.service(5), table 2 "Exit causes and the effect of the Restart= settings":
# the results each setting restarts after. "core-dump" is an unclean signal too.
RESULTS = ("success", "exit-code", "signal", "core-dump", "timeout", "watchdog")
TABLE = {
    "no": set(),
    "always": set(RESULTS),
    "on-success": {"success"},
    "on-failure": {"exit-code", "signal", "core-dump", "timeout", "watchdog"},
    "on-abnormal": {"signal", "core-dump", "timeout", "watchdog"},
    "on-abort": {"signal", "core-dump"},
    "on-watchdog": {"watchdog"},
}

NO_JOB = (0, "/")
A_JOB = (42, "/org/freedesktop/systemd1/job/42")


@pytest.mark.parametrize("setting", sorted(TABLE))
@pytest.mark.parametrize("result", RESULTS)
def test_restart_covers_follows_systemds_table(setting: str, result: str) -> None:
    assert restart_covers(setting, result) is (result in TABLE[setting])


@pytest.mark.parametrize("setting", ["", "banana", "On-Failure", "on-failure "])
def test_restart_covers_an_unknown_setting_is_none_not_a_guess(setting: str) -> None:
    assert restart_covers(setting, "exit-code") is None


# -- job_queued, restart_pending ------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "queued"),
    [
        (NO_JOB, False),
        (list(NO_JOB), False),
        (A_JOB, True),
        (list(A_JOB), True),
        ((), False),
        (None, False),
        ("42", False),
        (("42", "/job/42"), False),
    ],
)
def test_job_queued(job: Any, queued: bool) -> None:
    assert job_queued({"Job": job}) is queued


def test_job_queued_without_the_property() -> None:
    assert job_queued({}) is False


@pytest.mark.parametrize(
    ("props", "pending"),
    [
        ({"ActiveState": "activating", "SubState": "auto-restart", "Job": NO_JOB}, True),
        # systemd 254+: failed first, then auto-restart, under a substate of its own.
        ({"ActiveState": "failed", "SubState": "failed-before-auto-restart"}, True),
        # A start job queued on a failed unit: someone (systemd's timer, an operator) acts.
        ({"ActiveState": "failed", "SubState": "failed", "Job": A_JOB}, True),
        # A job on an active unit is not a restart of a failure.
        ({"ActiveState": "active", "SubState": "running", "Job": A_JOB}, False),
        ({"ActiveState": "failed", "SubState": "failed", "Job": NO_JOB}, False),
        ({}, False),
    ],
)
def test_restart_pending_reads_only_what_systemd_shows(
    props: dict[str, Any], pending: bool
) -> None:
    assert restart_pending(props) is pending


# -- systemd_would_restart ------------------------------------------------------------


def _failed(restart: str, result: str) -> dict[str, Any]:
    return {"ActiveState": "failed", "SubState": "failed", "Restart": restart, "Result": result}


@pytest.mark.parametrize("setting", sorted(TABLE))
@pytest.mark.parametrize("result", [r for r in RESULTS if r != "success"])
def test_systemd_would_restart_a_failed_unit_its_setting_covers(setting: str, result: str) -> None:
    assert systemd_would_restart(_failed(setting, result)) is (result in TABLE[setting])


def test_systemd_would_not_restart_past_its_start_limit() -> None:
    # Restart=always covers every result, but a refused start is the end of it.
    assert not systemd_would_restart(_failed("always", "start-limit-hit"))


@pytest.mark.parametrize(
    "props",
    [
        _failed("always", ""),  # no result: nothing to match the setting against
        {"ActiveState": "failed", "Result": "exit-code"},  # no Restart=: systemd's "no"
        _failed("on-banana", "exit-code"),  # a setting this systemd does not know
        {"ActiveState": "active", "Restart": "always", "Result": "exit-code"},
        {"ActiveState": "inactive", "Restart": "always", "Result": "signal"},
    ],
)
def test_systemd_would_not_restart(props: dict[str, Any]) -> None:
    assert not systemd_would_restart(props)


# -- classify -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result", ["oom-kill", "core-dump", "signal", "timeout", "watchdog", "start-limit-hit"]
)
def test_classify_names_the_result(result: str) -> None:
    assert classify({"Result": result, "ExecMainCode": 1, "ExecMainStatus": 3}) == result


@pytest.mark.parametrize("result", ["resources", "exit-code"])
def test_classify_resources_and_exit_code(result: str) -> None:
    assert classify({"Result": result}) == result


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (3, 0, "core-dump"),  # CLD_DUMPED
        (2, 9, "signal"),  # CLD_KILLED
        (1, 1, "exit-code"),  # CLD_EXITED, non-zero
        (1, 0, "unknown"),  # a clean exit is no failure the code can name
        (0, 0, "unknown"),
    ],
)
def test_classify_falls_back_to_exec_main_code(code: int, status: int, expected: str) -> None:
    props = {"Result": "success", "ExecMainCode": code, "ExecMainStatus": status}
    assert classify(props) == expected


def test_classify_a_bool_is_not_an_exit_code() -> None:
    # bool is an int subclass: a True from a confused caller is not CLD_EXITED.
    assert classify({"ExecMainCode": True, "ExecMainStatus": True}) == "unknown"


def test_classify_the_triggers_result_wins_over_the_units() -> None:
    # The start limit: Result keeps the crash's value through the refused start.
    props = {"Result": "exit-code", "ExecMainCode": 1, "ExecMainStatus": 1}
    assert classify(props, trigger_result="start-limit-hit") == "start-limit-hit"


def test_classify_a_failed_dependency_comes_first() -> None:
    props = {"Result": "oom-kill", "ActiveState": "active"}
    assert classify(props, failed_dependencies=["db.service"], health_failed=True) == "dependency"


@pytest.mark.parametrize("active", ["active", "reloading"])
def test_classify_a_running_unit_failing_its_probe_is_health(active: str) -> None:
    # Result describes an earlier run, not the probe's failure.
    assert classify({"ActiveState": active, "Result": "signal"}, health_failed=True) == "health"


def test_classify_health_is_the_last_resort_of_a_stopped_unit() -> None:
    props = {"ActiveState": "failed", "Result": "signal"}
    assert classify(props, health_failed=True) == "signal"
    assert classify({"ActiveState": "failed"}, health_failed=True) == "health"


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=30),
    st.binary(max_size=20),
    st.lists(st.integers(min_value=-5, max_value=300), max_size=20),
    st.lists(st.text(max_size=10), max_size=5),
    st.tuples(st.integers(), st.text(max_size=10)),
)
_keys = st.sampled_from(
    [
        "LoadState",
        "ActiveState",
        "SubState",
        "Result",
        "ExecMainCode",
        "ExecMainStatus",
        "NRestarts",
        "MainPID",
        "PIDFile",
        "InvocationID",
        "ControlGroup",
        "Restart",
        "Job",
        "Requires",
        "BindsTo",
        "Wants",
        "After",
        "StateDirectory",
        "LogsDirectory",
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    props=st.dictionaries(_keys, _values),
    trigger=st.sampled_from(["", "start-limit-hit", "exit-code", "junk"]),
    health=st.booleans(),
)
def test_hostile_properties_never_raise_and_stay_typed(
    props: dict[str, Any], trigger: str, health: bool
) -> None:
    d = diagnosis_from("x.service", props, trigger_result=trigger, health_failed=health)
    assert d.classification in CLASSES
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in (d.main_pid, d.n_restarts))
    assert all(
        isinstance(v, str)
        for v in (d.load_state, d.active_state, d.result, d.invocation_id, d.restart_setting)
    )
    for names in (d.requires, d.binds_to, d.wants, d.after, d.state_directories):
        assert all(isinstance(n, str) for n in names)
    assert isinstance(d.job_queued, bool)
    assert restart_pending(props) in (True, False)
    assert systemd_would_restart(props) in (True, False)
    d.summary()


# -- diagnosis_from -------------------------------------------------------------------

# A failed Restart=no service as the listener's snapshot carries it (values unwrapped).
PROPS: dict[str, Any] = {
    "LoadState": "loaded",
    "ActiveState": "failed",
    "SubState": "failed",
    "Result": "exit-code",
    "ExecMainCode": 1,
    "ExecMainStatus": 3,
    "NRestarts": 2,
    "MainPID": 0,
    "PIDFile": "/run/web.pid",
    "InvocationID": bytes(range(16)),
    "ControlGroup": "/system.slice/web.service",
    "Restart": "no",
    "Job": NO_JOB,
    "Requires": ["db.service", "sysinit.target"],
    "BindsTo": [],
    "Wants": ["network-online.target"],
    "After": ["db.service", "network-online.target"],
    "StateDirectory": ["web"],
    "LogsDirectory": ["web", "web/audit"],
}


def test_diagnosis_from_reads_every_field() -> None:
    d = diagnosis_from("web.service", PROPS)
    assert d == diagnose.Diagnosis(
        unit="web.service",
        load_state="loaded",
        active_state="failed",
        sub_state="failed",
        result="exit-code",
        exec_main_code=1,
        exec_main_status=3,
        n_restarts=2,
        main_pid=0,
        pidfile="/run/web.pid",
        invocation_id="000102030405060708090a0b0c0d0e0f",
        control_group="/system.slice/web.service",
        restart_setting="no",
        job_queued=False,
        requires=("db.service", "sysinit.target"),
        binds_to=(),
        wants=("network-online.target",),
        after=("db.service", "network-online.target"),
        state_directories=("web",),
        logs_directories=("web", "web/audit"),
        classification="exit-code",
    )
    assert d.found and d.failed and not d.active
    assert d.summary() == (
        "web.service: failed/failed, result exit-code, status 3, 2 restarts by systemd,"
        " classified exit-code"
    )


@pytest.mark.parametrize(
    ("raw", "hexed"),
    [
        (bytes(range(16)), "000102030405060708090a0b0c0d0e0f"),
        (bytearray(b"\xff" * 16), "ff" * 16),
        (list(range(16)), "000102030405060708090a0b0c0d0e0f"),  # dbus-next's "ay"
        ("already-text", "already-text"),
        ([256], ""),  # not bytes: no InvocationID rather than an exception
        (["a"], ""),
        (None, ""),
        (7, ""),
    ],
)
def test_diagnosis_invocation_id_from_each_library_shape(raw: Any, hexed: str) -> None:
    assert diagnosis_from("u.service", {"InvocationID": raw}).invocation_id == hexed


def test_diagnosis_from_passes_the_trigger_on_to_the_classification() -> None:
    d = diagnosis_from("web.service", PROPS, trigger_result="start-limit-hit")
    assert d.classification == "start-limit-hit"
    assert d.result == "exit-code"  # what systemd says stays as it said it
    d = diagnosis_from("web.service", PROPS, failed_dependencies=["db.service"])
    assert d.classification == "dependency"


@pytest.mark.parametrize(
    ("load", "found"),
    [
        ("loaded", True),
        ("not-found", False),
        ("bad-setting", False),
        ("error", False),
        ("masked", False),
    ],
)
def test_diagnosis_found(load: str, found: bool) -> None:
    assert diagnosis_from("u.service", {"LoadState": load}).found is found


@pytest.mark.parametrize(
    ("active", "is_active"),
    [("active", True), ("reloading", True), ("activating", False), ("failed", False)],
)
def test_diagnosis_active(active: str, is_active: bool) -> None:
    assert diagnosis_from("u.service", {"ActiveState": active}).active is is_active


def test_summary_without_an_exit_code_names_no_status() -> None:
    d = diagnosis_from("u.service", {"ActiveState": "failed", "Result": "signal"})
    assert d.summary() == (
        "u.service: failed/, result signal, 0 restarts by systemd, classified signal"
    )


# -- settle ---------------------------------------------------------------------------


class _Client:
    """Only wait_for is used by settle(); the rest of the protocol is never reached."""

    def __init__(self, answer: dict[str, Any] | BaseException) -> None:
        self.answer = answer
        self.calls: list[tuple[str, float, bool]] = []

    async def wait_for(self, name: str, predicate: Any, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        moved = predicate({"ActiveState": "activating", "SubState": "auto-restart"})
        stayed = predicate({"ActiveState": "failed", "SubState": "failed", "Job": NO_JOB})
        self.calls.append((name, timeout, moved and not stayed))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.mark.asyncio
async def test_settle_does_not_wait_when_systemd_will_not_restart() -> None:
    client = _Client({"never": "used"})
    props = _failed("no", "exit-code")
    assert await settle(client, "u.service", props) is props  # type: ignore[arg-type]
    assert client.calls == []


@pytest.mark.asyncio
async def test_settle_waits_bounded_for_systemds_own_restart() -> None:
    later = {"ActiveState": "activating", "SubState": "auto-restart"}
    client = _Client(later)
    got = await settle(client, "u.service", _failed("on-failure", "exit-code"))  # type: ignore[arg-type]
    assert got == later
    assert client.calls == [("u.service", SETTLE_TIMEOUT, True)]


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [TimeoutError(), RuntimeError("bus said no")])
async def test_settle_keeps_what_it_read_when_nothing_moved(error: BaseException) -> None:
    props = _failed("always", "signal")
    client = _Client(error)
    assert await settle(client, "u.service", props) is props  # type: ignore[arg-type]
    assert len(client.calls) == 1
