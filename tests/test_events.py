"""`unitgen events`, busctl monitor and the exporter: the same stream, seen from outside.

The exporter runs in the test process on dbus-next or dbus-fast; the
consumers are separate processes on the bus, as an operator would run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from eventstream_helpers import FakeBackend, PrivateBus, connect, disconnect, private_bus
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.dbus_api import RecoveryService
from handlers.events import Event, EventKind
from handlers.public_fields import DETAIL_TYPES, REDACTED, public_details
from handlers.secrets import read_secret
from unitgen.commands.events import format_event
from unitgen.policy import Policy

REPO = Path(__file__).resolve().parents[1]
ALL_KINDS = list(EventKind)


@pytest.fixture
def bus_daemon() -> Iterator[PrivateBus]:
    with private_bus() as bus:
        yield bus


@pytest.fixture(params=["next", "fast"])
def lib_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def service(bus_daemon: PrivateBus, lib_name: str) -> AsyncIterator[RecoveryService]:
    svc = RecoveryService(FakeBackend())
    bus = await connect(lib_name, bus_daemon.address)
    try:
        await svc.attach(bus)
        yield svc
    finally:
        await svc.close()
        await disconnect(bus)


async def spawn(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()


async def readline(stream: asyncio.StreamReader | None, within: float = 10) -> str:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), within)
    assert line, "stream ended"
    return line.decode()


async def until_monitoring(service: RecoveryService, monitor: asyncio.subprocess.Process) -> None:
    """Monitors say nothing when they are ready: send probes until one shows up."""

    async def probe() -> None:
        while True:
            service.emit(Event(EventKind.HEALTH_CHANGED, "probe.service", "", {"healthy": True}))
            try:
                line = await readline(monitor.stdout, within=0.2)
            except TimeoutError:
                continue
            if "probe.service" in line:
                return

    await asyncio.wait_for(probe(), 15)


def the_events() -> list[Event]:
    fields: list[dict[str, Any]] = [
        {"classification": "exit-code", "source": "listener", "level": "restart"},
        {"step": "restarting", "level": "restart"},
        {"step": "verifying", "result": "failed", "duration": 0.5, "level": "restart"},
        {"from": "restart", "to": "cleanup-then-restart", "level": "cleanup-then-restart"},
        {"attempts": 2, "duration": 3.25, "level": "cleanup-then-restart"},
        {"reason": "budget", "attempts": 5, "level": "alert-and-stop"},
        {"healthy": False, "failures": 3, "detail": "http 503"},
        {"cause": "dependency db.service", "cause_kind": "dependency", "member_count": 2},
        {"cause": "dependency db.service", "state": "recovered", "recovered": 3, "waiting": 0},
        {"unit_result": "exit-code", "exit_code": "exited", "exit_status": 3, "n_restarts": 2,
         "restarted_by": "systemd"},
    ]  # fmt: skip
    outside = (EventKind.HEALTH_CHANGED, EventKind.CRASHED)  # no incident
    return [
        Event(kind, f"u{i}.service", "" if kind in outside else "inc-7", f, 1.7e9 + i)
        for i, (kind, f) in enumerate(zip(ALL_KINDS, fields, strict=True))
    ]


@pytest.mark.asyncio
async def test_unitgen_events_and_busctl_monitor_see_the_same_stream(
    service: RecoveryService, bus_daemon: PrivateBus
) -> None:
    consumer = await spawn(
        sys.executable, "-m", "unitgen", "events", "--json", "--address", bus_daemon.address,
        "--unit", "u*.service", "--count", str(len(ALL_KINDS)),
    )  # fmt: skip
    monitor = await spawn(
        "busctl", f"--address={bus_daemon.address}", "monitor", "--json=short",
        "org.unitgen.Recovery1",
    )  # fmt: skip
    try:
        assert "following org.unitgen.Recovery1" in await readline(consumer.stderr)

        await until_monitoring(service, monitor)
        events = the_events()
        for e in events:
            service.emit(e)
        out, err = await asyncio.wait_for(consumer.communicate(), 15)
        assert consumer.returncode == 0, err.decode()
        got = [json.loads(line) for line in out.decode().splitlines()]
        seen_by_busctl: list[dict[str, Any]] = []
        while len(seen_by_busctl) < len(events):
            msg = json.loads(await readline(monitor.stdout))
            if msg.get("type") == "signal" and not str(msg["payload"]["data"][0]).startswith(
                "probe"
            ):
                seen_by_busctl.append(msg)
    finally:
        await stop(consumer)
        await stop(monitor)
    assert [g["event"] for g in got] == [e.kind.value for e in events]
    assert [m["member"] for m in seen_by_busctl] == [e.kind.value for e in events]
    for e, line, msg in zip(events, got, seen_by_busctl, strict=True):
        assert line["unit"] == e.unit and line["incident_id"] == e.incident_id
        assert line["timestamp"] == pytest.approx(e.timestamp)
        assert line["details"] == dict(public_details(e))
        assert msg["payload"]["type"] == "ssta{sv}"
        unit, incident, ts, details = msg["payload"]["data"]
        assert (unit, incident, ts) == (e.unit, e.incident_id, int(e.timestamp * 1_000_000))
        # busctl's own rendering of the variants: {"key": {"type": "s", "data": ...}}
        assert {k: v["data"] for k, v in details.items()} == line["details"]


def test_unreachable_bus_is_one_line_and_exit_1(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "unitgen", "events", "--address", f"unix:path={tmp_path}/nope"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("unitgen: cannot connect") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_count_is_usage_error() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "unitgen", "events", "--count", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert res.returncode == 2 and "--count" in res.stderr


def test_text_line_is_one_line_even_for_hostile_names() -> None:
    line = format_event(
        "GaveUp", "evil\nGaveUp x.service", "i1", 1_700_000_000_000_000,
        {"reason": "budget", "detail": "two words", "alerted": True}, as_json=False,
    )  # fmt: skip
    assert "\n" not in line
    assert line.startswith(
        "2023-11-14T22:13:20.000+00:00 GaveUp evil\\nGaveUp x.service incident=i1"
    )
    assert 'detail="two words"' in line and "alerted=true" in line and "reason=budget" in line


@pytest.mark.asyncio
async def test_no_secret_from_an_alert_url_file_reaches_a_consumer(
    service: RecoveryService, bus_daemon: PrivateBus, tmp_path: Path
) -> None:
    """A policy whose alert reads its URL from url_file; even a careless event stays clean."""
    url_file = tmp_path / "slack.url"
    url_file.write_text("https://hooks.slack.com/services/T01/B02/s3cr3tT0k3n\n")
    policy = Policy(
        unit="web.service",
        alerts=({"kind": "slack", "name": "ops", "url_file": str(url_file)},),
    )
    url = read_secret(
        owner="alert ops", key_file="url_file", key_env="url_env",
        file=str(url_file), env_name=None, environ={},
    )  # fmt: skip
    careless: dict[str, Any] = {str(k): str(v) for k, v in policy.alerts[0].items()}
    careless.update(
        url=url,
        reason="budget",
        detail=f"alert ops: POST {url} failed",
        error="smtp login password=hunter2 refused",
        message=f"Authorization: Bearer {url.rsplit('/', 1)[1]}",
    )
    consumer = await spawn(
        sys.executable, "-m", "unitgen", "events", "--json", "--address", bus_daemon.address,
        "--count", "1", "--unit", "web.service",
    )  # fmt: skip
    monitor = await spawn(
        "dbus-monitor", "--address", bus_daemon.address, "interface='org.unitgen.Recovery1'"
    )
    try:
        assert "following" in await readline(consumer.stderr)
        await until_monitoring(service, monitor)
        service.emit(Event(EventKind.GAVE_UP, "web.service", "inc-1", careless))
        out, _ = await asyncio.wait_for(consumer.communicate(), 15)
        monitor_text = ""
        # dbus-monitor prints the signal header, then one line per argument, the dict last.
        while "GaveUp" not in monitor_text or not monitor_text.rstrip().endswith("]"):
            monitor_text += await readline(monitor.stdout)
    finally:
        await stop(consumer)
        await stop(monitor)
    (line,) = out.decode().splitlines()
    details = json.loads(line)["details"]
    for text in (line, monitor_text):
        assert "s3cr3tT0k3n" not in text and "hooks.slack.com" not in text
        assert "hunter2" not in text
        assert str(url_file) not in text  # not even where the secret lives
    assert details["reason"] == "budget"
    assert '"budget"' in monitor_text and REDACTED in monitor_text  # it did see the details
    assert details["detail"] == REDACTED and details["error"] == REDACTED
    assert "url" not in details and "url_file" not in details


_VALUES = st.one_of(st.text(max_size=300), st.integers(), st.floats(allow_nan=True), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*DETAIL_TYPES, "url", "password", "x"]) | st.text(max_size=10), _VALUES
    )
)
def test_published_details_are_allow_listed_typed_and_clean(fields: dict[str, Any]) -> None:
    details = public_details(Event(EventKind.STEP_FINISHED, "u.service", "i", fields))
    assert set(details) <= set(DETAIL_TYPES)
    for key, value in details.items():
        assert type(value) is DETAIL_TYPES[key], (key, value)
        if isinstance(value, str):
            assert "://" not in value and "\n" not in value and len(value) <= 200


@settings(max_examples=300)
@given(st.lists(st.text(max_size=450), min_size=1, max_size=20))
def test_screened_text_is_remembered_without_changing_the_answer(values: list[str]) -> None:
    import handlers.public_fields as pf

    def screened(value: str) -> str:  # the rule, without the memo
        if pf.looks_secret(value):
            return REDACTED
        line = " ".join(value.split())
        return line if len(line) <= pf.MAX_TEXT else line[: pf.MAX_TEXT - 1] + "…"

    for value in values + values + ["token=abc", "https://hooks.example/x"]:
        assert pf.public_text(value) == screened(value)
    assert pf.public_text("password: hunter2") == REDACTED
    assert len(pf._SCREENED) <= pf._SCREENED_MAX
