"""Crashes as events and the flapping alert's window logic (a real webhook receiver).

The proof on the real manager is tests/test_crashes_sandbox.py; here the window is
driven by hand: the clock is a number and each window's end is an event the test sets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from receivers import Receiver

from handlers.alerts import Alerter, AlertTarget
from handlers.events import Event, EventKind
from handlers.flapping import Crash, FlapWatch
from handlers.journal import MESSAGE_IDS, entry_fields
from handlers.metrics import Metrics
from unitgen.errors import SpecError
from unitgen.model import AlertOn
from unitgen.policy import Policy, from_json, to_json
from unitgen.specfile import parse_spec

UNIT = "api.service"


def crash(at: float, status: int = 3, n: int = 0, by: str = "systemd") -> Crash:
    return Crash(at, "exit-code", "exited", status, n, by)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


class Windows:
    """The FlapWatch's sleep: each window ends when the test says so."""

    def __init__(self) -> None:
        self.ends: asyncio.Queue[None] = asyncio.Queue()
        self.asked: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.ends.get()


def watch(receiver: Receiver, now: list[float], windows: Windows, **alert_on: Any) -> FlapWatch:
    target = AlertTarget.from_mapping(
        {"name": "ops", "type": "webhook", "url_env": "HOOK", "retries": 0}
    )
    policy = Policy(unit=UNIT, alert_on=AlertOn(**alert_on) if alert_on else None)
    return FlapWatch(
        lambda unit: policy,
        alerter_for=lambda p: Alerter([target], env={"HOOK": receiver.url()}),
        clock=lambda: now[0],
        sleep=windows.sleep,
        host="node1",
    )


async def settle(flaps: FlapWatch) -> None:
    await flaps.drain(10)
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_three_crashes_within_the_window_send_one_alert_with_a_digest(
    receiver: Receiver,
) -> None:
    now, windows = [1000.0], Windows()
    flaps = watch(receiver, now, windows, restarts=3, within=600.0)
    try:
        flaps.crashed(UNIT, crash(1000.0, n=0))
        flaps.crashed(UNIT, crash(1001.0, status=1, n=1))
        await settle(flaps)
        assert receiver.requests == []
        flaps.crashed(UNIT, crash(1002.0, n=2, by="ladder"))
        flaps.crashed(UNIT, crash(1003.0, n=3))  # the same window: no second alert
        await settle(flaps)
        (req,) = receiver.wait_for(1)
        body = json.loads(req.body)
        assert body["status"] == "firing" and body["level"] == "flapping"
        assert body["reason"] == "flapping" and body["attempts"] == 3
        assert [d["exit_status"] for d in body["digest"]] == [3, 1, 3]
        assert [d["restarted_by"] for d in body["digest"]] == ["systemd", "systemd", "ladder"]
        assert body["digest"][0]["at_iso"] == "1970-01-01T00:16:40Z"
        assert body["summary"].startswith("api.service crashed 3 times within 10min: ")
        assert len(receiver.requests) == 1
        assert windows.asked == [600.0]
    finally:
        await flaps.aclose()


@pytest.mark.asyncio
async def test_crashes_spread_wider_than_the_window_never_alert(receiver: Receiver) -> None:
    now, windows = [0.0], Windows()
    flaps = watch(receiver, now, windows, restarts=3, within=60.0)
    try:
        for at in (0.0, 50.0, 100.0, 150.0, 200.0):  # never three within 60 s
            flaps.crashed(UNIT, crash(at))
        await settle(flaps)
        assert receiver.requests == []
    finally:
        await flaps.aclose()


@pytest.mark.asyncio
async def test_still_flapping_fires_once_more_per_window_then_resolves(
    receiver: Receiver,
) -> None:
    now, windows = [0.0], Windows()
    flaps = watch(receiver, now, windows, restarts=2, within=60.0)
    try:
        flaps.crashed(UNIT, crash(0.0))
        flaps.crashed(UNIT, crash(1.0))
        await settle(flaps)
        receiver.wait_for(1)
        for at in (30.0, 50.0, 55.0):
            flaps.crashed(UNIT, crash(at))
        now[0] = 61.0
        windows.ends.put_nowait(None)  # first window over: three crashes in the last 60 s
        await settle(flaps)
        second = json.loads(receiver.wait_for(2)[1].body)
        assert second["status"] == "firing"
        assert [d["at"] for d in second["digest"]] == [1.0, 30.0, 50.0, 55.0]
        now[0] = 200.0
        windows.ends.put_nowait(None)  # quiet since: resolved, and the watch lets go
        await settle(flaps)
        third = json.loads(receiver.wait_for(3)[2].body)
        assert third["status"] == "resolved"
        assert (
            third["incident_id"]
            == second["incident_id"]
            == json.loads(receiver.requests[0].body)["incident_id"]
        )
        assert len(receiver.requests) == 3
        # A new flap later is a new alert with a new incident.
        flaps.crashed(UNIT, crash(300.0))
        flaps.crashed(UNIT, crash(301.0))
        await settle(flaps)
        fourth = json.loads(receiver.wait_for(4)[3].body)
        assert fourth["status"] == "firing" and fourth["incident_id"] != third["incident_id"]
    finally:
        await flaps.aclose()


@pytest.mark.asyncio
async def test_no_alert_on_means_no_alert(receiver: Receiver) -> None:
    now, windows = [0.0], Windows()
    flaps = watch(receiver, now, windows)
    try:
        for at in range(10):
            flaps.crashed(UNIT, crash(float(at)))
        await settle(flaps)
        assert receiver.requests == []
    finally:
        await flaps.aclose()


def test_crash_of_systemd_properties() -> None:
    props = {"Result": "signal", "ExecMainCode": 2, "ExecMainStatus": 9, "NRestarts": 4}
    c = Crash.of(props, "ladder", 5.0)
    assert c == Crash(5.0, "signal", "killed", 9, 4, "ladder")
    assert c.fields("ab12") == {
        "unit_result": "signal",
        "exit_code": "killed",
        "exit_status": 9,
        "n_restarts": 4,
        "restarted_by": "ladder",
        "invocation_id": "ab12",
    }
    assert Crash.of({}, "systemd", 1.0) == Crash(1.0, "unknown", "", 0, 0, "systemd")


def test_the_crashed_journal_entry_has_its_own_message_id_and_the_fields() -> None:
    event = Event(EventKind.CRASHED, UNIT, "", crash(1.0, n=2).fields("ab"), 1.0)
    fields = dict(entry_fields(event))
    assert fields["MESSAGE_ID"] == MESSAGE_IDS[EventKind.CRASHED]
    assert len(set(MESSAGE_IDS.values())) == len(EventKind)
    assert fields["UNITGEN_EVENT"] == "Crashed"
    assert fields["UNITGEN_UNIT"] == UNIT
    assert fields["UNITGEN_UNIT_RESULT"] == "exit-code"
    assert fields["UNITGEN_EXIT_STATUS"] == "3"
    assert fields["UNITGEN_N_RESTARTS"] == "2"
    assert fields["UNITGEN_RESTARTED_BY"] == "systemd"
    assert fields["PRIORITY"] == "4"
    assert fields["MESSAGE"] == (
        "api.service: crashed (exit-code, status 3, 2 restarts); systemd restarts it"
    )


def test_restarts_are_counted_by_who_made_them() -> None:
    m = Metrics()
    for by in ("systemd", "systemd", "ladder"):
        m.emit(Event(EventKind.CRASHED, UNIT, "", crash(1.0, by=by).fields("")))
    assert "unitgen_unit_restarts_total{" not in m.render()  # a crash is not a restart
    # systemd's restarts as the listener sees them start; the ladder's when it makes them.
    m.count_restart(UNIT)
    m.count_restart(UNIT)
    m.emit(Event(EventKind.STEP_FINISHED, UNIT, "i", {"step": "restarting", "result": "ok"}))
    m.emit(Event(EventKind.STEP_FINISHED, UNIT, "i", {"step": "restarting", "result": "failed"}))
    text = m.render()
    assert 'unitgen_unit_restarts_total{unit="api.service",by="systemd"} 2' in text
    assert 'unitgen_unit_restarts_total{unit="api.service",by="ladder"} 1' in text
    assert "# TYPE unitgen_unit_restarts_total counter" in text


SPEC_HEAD = '[service.api]\nexec = ["/usr/bin/api"]\n'


def test_alert_on_round_trips_through_the_policy() -> None:
    hook = '[alert.ops]\ntype = "webhook"\nurl_env = "X"\n'
    text = hook + SPEC_HEAD + 'alerts = ["ops"]\nalert_on = { restarts = 4, within = "2min" }\n'
    spec = parse_spec(text, "s.toml")
    from unitgen.policy import policy_from_service

    policy = policy_from_service(spec.services["api"], ())
    assert spec.services["api"].alerts == ("ops",)
    assert policy.alert_on == AlertOn(restarts=4, within=120.0)
    assert from_json(to_json(policy), "p.json").alert_on == AlertOn(4, 120.0)
    # Without it, the policy file is what it was before the key existed.
    plain = policy_from_service(parse_spec(SPEC_HEAD, "s.toml").services["api"], ())
    assert "alert_on" not in json.loads(to_json(plain))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{ restarts = 1 }", "service.api.alert_on.restarts: expected an integer from 2 to 1000"),
        ("{ restarts = 3, within = 0 }", "service.api.alert_on.within: expected a duration above"),
        ('{ within = "2d" }', "service.api.alert_on.within: expected a duration of at most 86400s"),
        ("{ restart = 3 }", "service.api.alert_on.restart"),
        ("3", "service.api.alert_on"),
    ],
)
def test_bad_alert_on_is_refused_naming_the_key(value: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC_HEAD + f"alert_on = {value}\n", "s.toml")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"29s"', "expected a duration of at least 30s"),
        ('"181s"', "expected a duration of at most 180s"),
    ],
)
def test_the_resend_interval_is_bounded(value: str, message: str) -> None:
    text = f'[alert.am]\ntype = "alertmanager"\nurl_env = "AM"\nresend_interval = {value}\n'
    with pytest.raises(SpecError) as info:
        parse_spec(text + SPEC_HEAD, "s.toml")
    assert f"alert.am.resend_interval: {message}" in str(info.value)


def test_alert_on_without_any_target_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC_HEAD + "alert_on = { restarts = 3 }\n", "s.toml")
    assert "service.api.alert_on: needs an alert target" in str(info.value)
    hook = '[alert.ops]\ntype = "webhook"\nurl_env = "X"\n'
    # Inherited targets count; alerts = [] turns them off again.
    parse_spec('[defaults]\nalerts = ["ops"]\n' + hook + SPEC_HEAD + "alert_on = {}\n", "s")
    with pytest.raises(SpecError):
        parse_spec(
            '[defaults]\nalerts = ["ops"]\n' + hook + SPEC_HEAD + "alerts = []\nalert_on = {}\n",
            "s",
        )


class _Recording:
    """An alerter stand-in for the window arithmetic alone (delivery is tested above)."""

    def __init__(self) -> None:
        self.targets = ("one",)
        self.alerts: list[Any] = []

    async def send(self, alert: Any) -> list[Any]:
        self.alerts.append(alert)
        return []


@pytest.mark.asyncio
@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 1000, allow_nan=False), min_size=0, max_size=30),
    restarts=st.integers(2, 6),
    within=st.floats(1, 600, allow_nan=False),
)
async def test_one_alert_exactly_when_some_restarts_crashes_fit_the_window(
    gaps: list[float], restarts: int, within: float
) -> None:
    times, at = [], 0.0
    for gap in gaps:
        at += gap
        times.append(at)
    recording = _Recording()
    policy = Policy(unit=UNIT, alert_on=AlertOn(restarts, within))
    never = asyncio.Event()

    async def window(_: float) -> None:
        await never.wait()  # the window never ends here: only the first alert counts

    flaps = FlapWatch(
        lambda unit: policy,
        alerter_for=lambda p: recording,  # type: ignore[arg-type,return-value]
        clock=lambda: times[-1] if times else 0.0,
        sleep=window,
    )
    try:
        for t in times:
            flaps.crashed(UNIT, crash(t))
        await flaps.drain(5)
        expected = any(
            times[i + restarts - 1] - times[i] <= within for i in range(len(times) - restarts + 1)
        )
        assert len(recording.alerts) == (1 if expected else 0)
        if expected:
            (alert,) = recording.alerts
            assert alert.status == "firing" and len(alert.digest) >= restarts
    finally:
        await flaps.aclose()
